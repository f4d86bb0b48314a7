"""A picture of test images with their questions, the right answers and a model's answers (for docs/).

    example_sheet(items, answers, right, "docs/vision-examples.png")     # right[k]: whether answer k was graded right
"""

from __future__ import annotations

from pathlib import Path

from gptqwen.errors import require
from gptqwen.utils import atomic_write
from gptqwen.vision.data import Item, _font


def example_sheet(items: list[Item], answers: list[str], right: list[bool], path: str | Path, columns: int = 4,
                  scale: int = 3) -> Path:  # fmt: skip
    """Draw each item's image (scaled up) above its question, expected answer and the model's answer."""
    Image = require("PIL.Image", "vision", "drawing the example sheet")
    ImageDraw = require("PIL.ImageDraw", "vision", "drawing the example sheet")
    cell_w = max(it.image.width for it in items) * scale + 20 if items else 1
    rows = [items[i : i + columns] for i in range(0, len(items), columns)]
    heights = [max(it.image.height for it in row) * scale + 70 for row in rows]  # a row as tall as its tallest image
    tops = [10 + sum(heights[:r]) for r in range(len(rows))]
    sheet = Image.new("RGB", (columns * cell_w, max(1, sum(heights))), "white")
    draw, font = ImageDraw.Draw(sheet), _font(14)
    for k, (it, ans, ok) in enumerate(zip(items, answers, right)):
        x, y = (k % columns) * cell_w + 10, tops[k // columns]
        sheet.paste(it.image.resize((it.image.width * scale, it.image.height * scale), Image.Resampling.NEAREST), (x, y))
        top = y + it.image.height * scale + 6
        draw.text((x, top), it.question, fill="black", font=font)
        draw.text((x, top + 18), f"expected: {it.answer}", fill=(60, 60, 60), font=font)
        draw.text((x, top + 36), f"model: {ans}  ({'right' if ok else 'wrong'})", fill=(0, 120, 0) if ok else (170, 0, 0),
                  font=font)  # fmt: skip
    path = Path(path)
    with atomic_write(path, "wb") as f:
        sheet.save(f, format="PNG")
    return path
