"""The thinking-budget eval (`gptqwen eval --thinking-budget ...`, eval/budget.py): budget parsing, the curve's
points on a tiny model, grading of generate-until tasks, the CLI's table, JSON and PNG, and bad budgets."""

from __future__ import annotations

import json

import pytest
import torch

import _align_fixtures
from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.eval.budget import _match, budget_point, parse_budgets, reasoning_items
from gptqwen.infer import Engine
from gptqwen.model import Transformer

tok, model_dir = _align_fixtures.tok, _align_fixtures.model_dir  # shared fixtures


def test_parse_budgets():
    assert parse_budgets(["64", "0", "none", "16", "16"]) == [0, 16, 64, None]
    assert parse_budgets(["unlimited"]) == [None]
    for bad, match in ((["-1"], "negative"), (["12x"], "whole numbers"), ([], "at least one")):
        with pytest.raises(UserError, match=match):
            parse_budgets(bad)


def test_grading():
    items = reasoning_items(4, kinds=("arithmetic",))
    assert len(items) == 4 and all(it.question.startswith("What is") for it in items)
    assert _match("The answer is 12.\nQ: next", ["12"], ("\n",)) == 1.0
    assert _match(" 12 and more", ["12"], (" and",)) == 1.0
    assert _match("13", ["12"], ()) == 0.0


def test_cli_budget_curve(model_dir, tmp_path, capsys):
    from gptqwen.cli import main

    out, png = tmp_path / "b.json", tmp_path / "b.png"
    args = ["eval", "--model", str(model_dir), "--task", "reasoning", "--thinking-budget", "0", "2", "none",
            "--limit", "5", "--max-new-tokens", "6", "--output", str(out), "--plot", str(png), "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out.read_text()) and png.stat().st_size > 1000
    points = [(r["mode"], r["budget"]) for r in doc["results"]]
    assert points == [("non_thinking", 0), ("thinking", 2), ("thinking", None)]
    off = doc["results"][0]
    assert off["n"] == 5 and off["budget_hit"] == 0 and off["thinking_tokens"] == 0
    for r in doc["results"]:
        assert 0 <= r["accuracy"] <= 1 and r["stderr"] >= 0 and 0 <= r["budget_hit"] <= 1
    assert doc["results"][2]["budget_hit"] == 0  # no cap, nothing to hit
    assert main(["eval", "--model", str(model_dir), "--task", "reasoning", "--thinking-budget", "-4"]) == 2
    assert "negative" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--task", "copy", "--thinking-budget", "8"]) == 2
    assert "generate_until" in capsys.readouterr().err


class _Thinker(Transformer):
    """A model that always says `<think>`: it opens its block at once and never closes it by itself."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits[..., self.think_id] += 1e4
        return out


def test_budget_point_counts_hits_and_thinking_tokens(tok):
    torch.manual_seed(0)
    model = _Thinker(Config.from_name("qwen3-tiny", vocab_size=tok.vocab_size)).eval()
    model.think_id = tok.token_to_id("<think>")
    engine = Engine(model, tok, native=False)  # through forward, where the bias is
    items = reasoning_items(3, kinds=("logic",))
    capped = budget_point(engine, items, 5, True, max_new_tokens=12)
    assert capped["budget_hit"] == 1.0 and capped["thinking_tokens"] == 5.0 and capped["n"] == 3
    assert capped["samples"][0]["reasoning"].endswith("based on the thinking directly now.")
    free = budget_point(engine, items, None, True, max_new_tokens=12)
    assert free["budget_hit"] == 0.0 and free["thinking_tokens"] == 11.0  # the first token opened the block
    off = budget_point(engine, items, 5, False, max_new_tokens=12)
    assert off["mode"] == "non_thinking" and off["budget"] == 0 and off["budget_hit"] == 0.0  # no cap without thinking
