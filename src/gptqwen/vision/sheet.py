"""A picture of test images with their questions, the right answers and a model's answers (for docs/).

    example_sheet(items, answers, "docs/vision-examples.png")
"""

from __future__ import annotations

from pathlib import Path

from gptqwen.errors import require
from gptqwen.utils import atomic_write
from gptqwen.vision.data import Item, _font


def example_sheet(items: list[Item], answers: list[str], path: str | Path, columns: int = 4, scale: int = 3) -> Path:
    """Draw each item's image (scaled up) above its question, expected answer and the model's answer."""
    Image = require("PIL.Image", "vision", "drawing the example sheet")
    ImageDraw = require("PIL.ImageDraw", "vision", "drawing the example sheet")
    cell_w, cell_h = 128 * scale + 20, 96 * scale + 70
    rows = -(-len(items) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw, font = ImageDraw.Draw(sheet), _font(14)
    for k, (it, ans) in enumerate(zip(items, answers)):
        x, y = (k % columns) * cell_w + 10, (k // columns) * cell_h + 10
        sheet.paste(it.image.resize((it.image.width * scale, it.image.height * scale), Image.Resampling.NEAREST), (x, y))
        top = y + it.image.height * scale + 6
        ok = "right" if ans.strip().lower() == it.answer.lower() else "see task rule" if it.task == "chart" else "wrong"
        draw.text((x, top), it.question, fill="black", font=font)
        draw.text((x, top + 18), f"expected: {it.answer}", fill=(60, 60, 60), font=font)
        draw.text((x, top + 36), f"model: {ans}  ({ok})", fill=(0, 120, 0) if ok == "right" else (170, 0, 0), font=font)
    path = Path(path)
    with atomic_write(path, "wb") as f:
        sheet.save(f, format="PNG")
    return path
