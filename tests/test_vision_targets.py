"""The encoder stage's per-token targets (`vl.token_targets`, finetune.vl.TokenTargets): which tokens carry a
chart bar's letter and value or a shape's colour and side, the loss on a fixed batch, and the recipe switch."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("PIL.Image")

from gptqwen.errors import UserError  # noqa: E402
from gptqwen.finetune.vl import TokenTargets  # noqa: E402
from gptqwen.train.recipe import load_recipe  # noqa: E402
from gptqwen.vision import preprocess, vlm_config  # noqa: E402
from gptqwen.vision.data import COLOURS, make_item  # noqa: E402

VISION = vlm_config("qwen-vl-tiny")[1]


def _labels(item):
    image = preprocess(item.image, VISION)
    rows, cols = image.grid[0] // VISION.merge_size, image.grid[1] // VISION.merge_size
    return TokenTargets(VISION, 8).labels(item, image.grid).view(4, rows, cols), image


def test_chart_tokens_carry_their_bar_letter_and_value():
    item = make_item("chart", 0, 3)
    y, image = _labels(item)
    bars = item.meta["bars"]
    assert y.shape[1:] == (8, 6) and image.n_tokens == 48  # 96x128 pixels, 16-pixel tokens
    for c in range(6):
        column = y[:, :, c]
        assert (column == column[:, :1]).all()  # a whole column carries one bar (or none)
        letter = int(column[0, 0])
        if letter:
            _, x0, x1, value = bars[letter - 1]
            assert x0 < 16 * (c + 1) and x1 > 16 * c and int(column[1, 0]) == value
        else:
            assert int(column[1, 0]) == -100
    assert set(y[0].unique().tolist()) == set(range(len(bars) + 1))  # every bar is found, left to right
    assert (y[2:] == -100).all()  # no shapes in a chart


def test_position_tokens_carry_the_shapes_colour_and_side():
    item = make_item("position", 0, 1)
    y, _ = _labels(item)
    assert (y[:2] == -100).all()
    for _, colour, cx, cy, _ in item.meta["shapes"]:
        at = y[:, int(cy // 16), int(cx // 16)]  # the token under the shape's centre
        assert int(at[2]) == 1 + list(COLOURS).index(colour)
        assert int(at[3]) == 1 + (item.meta["sides"][colour] == "right")
    assert ((y[2] == 0) == (y[3] == -100)).all()  # a side exactly where there is a shape
    colour = make_item("colour", 0, 1)
    y, _ = _labels(colour)
    assert (y[2] > 0).any() and (y[3] == -100).all()  # one shape: a colour, no side


def test_loss_on_a_fixed_batch():
    """Zero heads: log 5 for the letter, log 7 for the colour, log 3 for the side, and 100 thresholds at log 2
    each, a tenth of their sum, for the value; training the heads lowers it."""
    torch.manual_seed(0)
    items = [make_item("chart", 0, i) for i in range(3)] + [make_item("position", 0, i) for i in range(3)]
    images = [preprocess(it.image, VISION) for it in items]
    targets = TokenTargets(VISION, 16)
    for p in targets.parameters():
        torch.nn.init.zeros_(p)
    feats = torch.randn(sum(im.n_tokens for im in images), 16)
    expected = math.log(5 * 7 * 3) + 10 * math.log(2)
    assert targets.loss(feats, images, items).item() == pytest.approx(expected, rel=1e-5)
    opt = torch.optim.Adam(targets.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        loss = targets.loss(feats, images, items)
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * expected


def test_recipe_switch_and_bad_projector():
    assert load_recipe("qwen-vl-tiny", trainer="vl").vl.token_targets
    assert not load_recipe("qwen-vl-tiny", ["vl.token_targets=false"], trainer="vl").vl.token_targets
    with pytest.raises(UserError, match="token_targets"):
        load_recipe("qwen-vl-tiny", ["vl.token_targets=[1]"], trainer="vl")
    resampler = vlm_config("qwen-vl-tiny-resampler")[1]
    with pytest.raises(UserError, match="merge projector"):
        TokenTargets(resampler, 16)


def test_task_weights_add_items_of_a_task():
    from gptqwen.vision.data import make_split

    even, heavy = make_split(["colour", "chart"], 4, 0), make_split(["colour", "chart"], 4, 0, weights={"chart": 2})
    assert [it.task for it in heavy].count("chart") == 8 and [it.task for it in heavy].count("colour") == 4
    assert {it.key() for it in even} < {it.key() for it in heavy}  # the same first items, more of the heavy task
    recipe = load_recipe("qwen-vl-tiny", trainer="vl")
    assert recipe.vl.task_weights == {"chart": 3} and recipe.stage(0).vl.task_weights == {}
    with pytest.raises(UserError, match="task_weights"):
        load_recipe("qwen-vl-tiny", ["vl.task_weights={lines: 2}"], trainer="vl")
