"""The thinking-budget eval (`gptqwen eval --thinking-budget ...`, eval/budget.py): budget parsing, the curve's
points on a tiny model, grading of generate-until tasks, the CLI's table, JSON and PNG, and bad budgets."""

from __future__ import annotations

import json

import pytest

import _align_fixtures
from gptqwen.errors import UserError
from gptqwen.eval.budget import _match, parse_budgets, reasoning_items

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
