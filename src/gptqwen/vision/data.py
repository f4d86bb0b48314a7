"""Synthetic images with questions and answers, drawn with Pillow, deterministic by (task, split, seed, index).

    from gptqwen.vision.data import TASKS, make_item, make_split
    item = make_item("chart", seed=0, index=17)      # Item(image, question, answer, task)
    train = make_split(["colour", "count"], 1000, seed=0)
    test = make_split(["colour", "count"], 200, seed=0, split="test", exclude=train)   # held out

Tasks:
- colour: one shape; "What colour is the shape?" -> red / green / blue / yellow / purple / orange
- shape: one shape; "What shape is this?" -> circle / square / triangle / diamond
- count: 1-5 shapes of one colour; "How many shapes are there?" -> 1..5
- position: two shapes; "Where is the <colour> shape?" -> left / right (of the other one)
- chart: a bar or line chart of 3-4 labelled values on a 0-100 axis (96x128 pixels, gridlines every 20);
  "What is the value of C?" -> the integer
- word: one word rendered with DejaVu Sans (shipped with matplotlib), left-aligned, in varying size, place and ink;
  "What word is written?" -> the word
- line: a short line of 2-3 words (192x32 pixels); "What does the line say?" -> the words
- page: a small page of 3 lines of 1-2 words (128x64 pixels); "What is written on the page?" -> the lines, one a line
(`line` and `page` are not in the default task list, DEFAULT_TASKS: qwen-vl-tiny's recipe trains the first six.)

Held-out items come from another seed stream (`split="test"`), and any test image identical to a training
image (byte for byte, same question) is skipped, so scores are on images the model never saw.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptqwen.errors import UserError, require

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
           "purple": (140, 60, 180), "orange": (240, 130, 30)}  # fmt: skip
SHAPES = ("circle", "square", "triangle", "diamond")
WORDS = ("apple", "river", "stone", "cloud", "green", "house", "light", "music", "paper", "table", "water", "bread",
         "chair", "dream", "earth", "field", "glass", "horse", "juice", "knife", "lemon", "mouse", "night", "ocean",
         "piano", "queen", "robot", "sugar", "tiger", "voice", "whale", "zebra", "cat", "dog", "sun", "map", "pen",
         "box", "cup", "key", "tree", "bird", "fish", "moon", "star", "road", "ship", "ring", "book", "door")  # fmt: skip
DEFAULT_TASKS = ("colour", "shape", "count", "position", "chart", "word")
TASKS = (*DEFAULT_TASKS, "line", "page")  # line and page: reading several words (answers of several tokens)
READING = {"line": 12, "page": 20}  # the multi-word tasks and the answer tokens they need at least
SPLIT_SEEDS = {"train": 0, "test": 7_919_000}


@dataclass
class Item:
    image: Any  # PIL.Image (RGB)
    question: str
    answer: str
    task: str
    # where things are, for the encoder stage's per-token targets: chart {"bars": [(letter, x0, x1, value)], "asked"},
    # shapes {"shapes": [(kind, colour, cx, cy, r)]}, position also {"sides": {colour: "left"/"right"}}
    meta: dict = field(default_factory=dict, compare=False)

    def messages(self, with_answer: bool = True, with_image: bool = True) -> list[dict]:
        """The chat form: the question and the image (unless text-only), then the answer. The question comes first
        so the image tokens can attend to it (chart values: 28.5 % vs 22.5 % image-first, docs/vision-diagnosis.md)."""
        content = [{"type": "text", "text": self.question}, {"type": "image", "image": self.image}] if with_image else self.question
        msgs = [{"role": "user", "content": content}]
        return msgs + [{"role": "assistant", "content": self.answer}] if with_answer else msgs

    def key(self) -> str:
        return hashlib.sha1(self.image.tobytes() + self.question.encode()).hexdigest()


def _draw_shape(draw, kind: str, cx: float, cy: float, r: float, fill) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def _canvas(w: int, h: int, rng: random.Random):
    Image = require("PIL.Image", "vision", "drawing synthetic images")
    ImageDraw = require("PIL.ImageDraw", "vision", "drawing synthetic images")
    shade = rng.randint(235, 255)
    img = Image.new("RGB", (w, h), (shade, shade, shade))
    return img, ImageDraw.Draw(img)


def _shapes(rng: random.Random, n: int, kinds: list[str], colours: list[str], size: int = 64) -> tuple[Any, list]:
    """n non-overlapping shapes; returns the image and [(kind, colour, cx, cy, r)]."""
    img, draw = _canvas(size, size, rng)
    placed: list[tuple[str, str, float, float, float]] = []
    r_max = 13 if n == 1 else 8
    while len(placed) < n:
        r = rng.uniform(r_max * 0.6, r_max)
        cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + rr + 2) ** 2 for _, _, x, y, rr in placed):
            placed.append((kinds[len(placed)], colours[len(placed)], cx, cy, r))
    for kind, colour, cx, cy, r in placed:
        _draw_shape(draw, kind, cx, cy, r, COLOURS[colour])
    return img, placed


def _font(size: int):
    ImageFont = require("PIL.ImageFont", "vision", "rendering text")
    mpl = require("matplotlib", "vision", "rendering text (its bundled DejaVu Sans font)")
    return ImageFont.truetype(str(Path(mpl.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


CHART_W, CHART_H = 96, 128  # image size; the plot area runs 0..100 over PLOT_TOP..PLOT_BOTTOM (1.08 px a unit)
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 16, 92, 6, 114
GRID_STEP = 20  # a labelled gridline every 20 units, as real charts have them
BAR_LETTERS = "ABCD"  # the labels of a chart's 3-4 values


def _chart(rng: random.Random) -> tuple[Any, str, str, dict]:
    n = rng.randint(3, 4)
    labels = BAR_LETTERS[:n]
    values = [rng.randint(5, 100) for _ in range(n)]
    img, draw = _canvas(CHART_W, CHART_H, rng)
    left, right, top, bottom = PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM
    font = _font(9)
    for v in range(0, 101, GRID_STEP):
        y = bottom - (bottom - top) * v / 100
        draw.line([(left, y), (right, y)], fill=(200, 200, 200))
        draw.text((1, y - 5), str(v), fill=(60, 60, 60), font=_font(7))
    step = (right - left) / n
    colour = COLOURS[rng.choice(list(COLOURS))]
    line = rng.random() < 0.5
    points, bars = [], []
    for i, (lab, v) in enumerate(zip(labels, values)):
        cx = left + step * (i + 0.5)
        y = bottom - (bottom - top) * v / 100
        points.append((cx, y))
        bars.append((lab, cx - step * 0.3, cx + step * 0.3, v))
        if not line:
            draw.rectangle([cx - step * 0.3, y, cx + step * 0.3, bottom], fill=colour)
        draw.text((cx - 3, bottom + 2), lab, fill=(0, 0, 0), font=font)
    if line:
        draw.line(points, fill=colour, width=2)
        for cx, y in points:
            draw.ellipse([cx - 2, y - 2, cx + 2, y + 2], fill=colour)
    k = rng.randrange(n)
    meta = {"bars": bars, "asked": k, "line": line, "colour": colour}
    return img, f"What is the value of {labels[k]}?", str(values[k]), meta


def _word(rng: random.Random) -> tuple[Any, str, str]:
    word = rng.choice(WORDS)
    img, draw = _canvas(128, 32, rng)
    size = rng.randint(14, 18)
    font = _font(size)
    # left-aligned with a few pixels of jitter, as a line of text starts at its margin (anywhere along the strip,
    # the tiny model read no word in 1,800 steps: chance)
    x, y = rng.uniform(2, 10), rng.uniform(1, 31 - size * 1.2)
    ink = rng.randint(0, 90)
    draw.text((x, y), word, fill=(ink, ink, ink), font=font)
    return img, "What word is written?", word, {}


def _text(rng: random.Random, size: tuple[int, int], lines: list[str], font_sizes: tuple[int, int]) -> Any:
    """Lines of text, left-aligned at one margin, in one size and ink (what a line or a small page of print looks like)."""
    img, draw = _canvas(*size, rng)
    px = rng.randint(*font_sizes)
    font, ink = _font(px), rng.randint(0, 90)
    x, y = rng.uniform(2, 6), rng.uniform(1, max(1.0, size[1] - len(lines) * px * 1.25))
    for k, line in enumerate(lines):
        draw.text((x, y + k * px * 1.25), line, fill=(ink, ink, ink), font=font)
    return img


def check_tasks(tasks: list[str] | tuple[str, ...]) -> None:
    """A clear error for a task name this module does not draw (before any image is made)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown vision task(s) {', '.join(map(repr, unknown))}; choose from {', '.join(TASKS)}")


def make_item(task: str, seed: int, index: int, split: str = "train") -> Item:
    """Item `index` of a task's stream; the same arguments always give the same image, question and answer."""
    check_tasks([task])
    rng = random.Random(f"{task}:{split}:{SPLIT_SEEDS[split] + seed}:{index}")
    colours = list(COLOURS)
    if task == "line":
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 3)))
        return Item(_text(rng, (192, 32), [words], (14, 16)), "What does the line say?", words, task)
    if task == "page":
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2))) for _ in range(3)]
        return Item(_text(rng, (128, 64), lines, (12, 13)), "What is written on the page?", "\n".join(lines), task)
    if task in ("chart", "word"):
        img, q, ans, meta = _chart(rng) if task == "chart" else _word(rng)
        return Item(img, q, ans, task, meta)
    if task == "colour":
        img, placed = _shapes(rng, 1, [rng.choice(SHAPES)], [ans := rng.choice(colours)])
        q = "What colour is the shape?"
    elif task == "shape":
        img, placed = _shapes(rng, 1, [ans := rng.choice(SHAPES)], [rng.choice(colours)])
        q = "What shape is this?"
    elif task == "count":
        n, colour = rng.randint(1, 5), rng.choice(colours)
        img, placed = _shapes(rng, n, [rng.choice(SHAPES) for _ in range(n)], [colour] * n)
        q, ans = "How many shapes are there?", str(n)
    else:
        a, b = rng.sample(colours, 2)
        img, placed = _shapes(rng, 2, [rng.choice(SHAPES), rng.choice(SHAPES)], [a, b])
        ans = "left" if placed[0][2] < placed[1][2] else "right"
        q = f"Is the {a} shape left or right of the {b} one?"
    meta = {"shapes": placed}
    if task == "position":
        meta["sides"] = {a: ans, b: "right" if ans == "left" else "left"}
    return Item(img, q, ans, task, meta)


def make_split(tasks: list[str] | tuple[str, ...], per_task: int, seed: int = 0, split: str = "train",
               exclude: list[Item] | None = None, weights: dict[str, float] | None = None) -> list[Item]:  # fmt: skip
    """`per_task` items of each task (times its weight, if any), interleaved; items identical to one in `exclude`
    are skipped. A task's items are the first of its stream, so a heavier weight only adds items."""
    check_tasks(tasks)
    seen = {it.key() for it in exclude or []}
    by_task: list[list[Item]] = []
    for task in tasks:
        got, i = [], 0
        while len(got) < round(per_task * (weights or {}).get(task, 1)):
            it = make_item(task, seed, i, split)
            i += 1
            if it.key() not in seen:
                got.append(it)
        by_task.append(got)
    return [got[k] for k in range(max(map(len, by_task), default=0)) for got in by_task if k < len(got)]


def corpus_text(tasks: list[str] | tuple[str, ...]) -> list[str]:
    """Every question and answer word the tasks use (to train a small tokenizer that covers them)."""
    texts = ["What colour is the shape? What shape is this? How many shapes are there? What word is written?",
             "What does the line say? What is written on the page?",
             "Is the shape left or right of the one? What is the value of A B C D?", " ".join(COLOURS), " ".join(SHAPES),
             " ".join(WORDS), " ".join(str(i) for i in range(101))]  # fmt: skip
    return texts * 20
