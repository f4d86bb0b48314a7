"""Execution feedback with model-written tests (`gptqwen synth execution`, `gptqwen.align.exec_tests`): the sanity
filter, the sandboxed test runs and the rows they give."""

import json

import pytest

import _align_fixtures
from gptqwen.align import exec_tests as X
from gptqwen.align.grpo import encode_prompt_rows
from gptqwen.cli import main
from gptqwen.errors import UserError

tok, model_dir = _align_fixtures.tok, _align_fixtures.model_dir  # shared fixtures

RIGHT = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```"
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
BROKEN = "```python\ndef add(a, b)\n    return a + b\n```"
WRITTEN = [  # two replies of the test writer
    "```python\nassert add(2, 3) == 5\nassert add(1, 1) == 3\nassert add(0, 0) is None\nassert True\nassert add(2, 3) == 5\n```",
    "<think>\nassert add(9, 9) == 0\n</think>\n\nassert add(-1, 1) == 0\nprint('done')\nassert add(1,",
]


def test_run_tests_and_the_parts_of_the_filter():
    code = "def add(a, b):\n    return a + b\n"
    assert X.run_tests(code, ["assert add(1, 2) == 3", "assert add(1, 2) == 4", "raise SystemExit(0)", "1/0"]) == [
        True, False, False, False]  # fmt: skip
    assert X.run_tests("def add(a, b) return", ["assert True"]) == [False]  # a solution that does not load
    assert X.run_tests("while True: pass", ["assert True", "assert 1"], timeout=1.0) == [False, False]
    assert X.well_formed("assert add(2, 3) == 5", "add") and not X.well_formed("assert True", "add")
    assert not X.well_formed("assert add(1,", "add") and not X.well_formed("x = add(1, 2)", "add")
    assert not X.well_formed("assert add(1, 2) == 3; import os", "add")
    # the reply's answer part only (not its thinking), each assert line once
    assert X.candidate_tests(WRITTEN[1]) == ["assert add(-1, 1) == 0", "assert add(1,"]
    assert X.entry_point({"prompt": "Complete `def clamp(x, lo, hi):` so ..."}) == "clamp"
    with pytest.raises(UserError, match="tasks.jsonl:3.*entry_point"):
        X.entry_point({"prompt": "Sort a list.", "_where": "tasks.jsonl:3"})


def test_solutions_are_kept_when_they_pass_the_tests_that_pass_the_filter(tok, monkeypatch):
    rows = encode_prompt_rows(tok, [
        (1, {"prompt": "Write def add(a, b) that returns the sum.", "entry_point": "add"}),
        (2, {"prompt": "Write add(a, b).", "tests": ["assert add(2, 2) == 4"]}),  # brings its own test
    ], "tasks.jsonl")  # fmt: skip
    calls = []

    def fake_sample(model, tokenizer, ids, params):
        calls.append(len(ids))
        texts = [RIGHT, WRONG, BROKEN] * 2 if len(calls) == 1 else WRITTEN  # solutions first, then tests (row 1)
        return [[0]] * len(texts), texts

    monkeypatch.setattr(X, "sample", fake_sample)
    out = X.execution_feedback(None, tok, rows, k=3, test_samples=2, min_tests=2)
    assert calls == [6, 2]  # k per row; test_samples for the row without tests only
    s = out["stats"]
    assert (s["tests_written"], s["tests_malformed"], s["tests_vacuous"], s["tests_unmatched"], s["tests_kept"]) == (
        6, 2, 1, 1, 2)  # fmt: skip
    assert s["checked_problems"] == 2 and s["solved_problems"] == 2 and s["pass_rate"] == 2 / 6
    first, second = out["sft"]
    assert first["tests"] == ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"] and second["tests"] == ["assert add(2, 2) == 4"]
    assert "a + b" in first["messages"][-1]["content"]
    assert len(out["prefs"]) == 4 and all("a + b" in p["chosen"][0]["content"] for p in out["prefs"])
    # too few sane tests: the task is skipped, not graded by what is left
    calls.clear()
    out = X.execution_feedback(None, tok, rows[:1], k=3, test_samples=2, min_tests=3)
    assert out["stats"]["checked_problems"] == 0 and out["sft"] == []
    with pytest.raises(UserError, match="--tests given needs 'tests'"):
        X.execution_feedback(None, tok, rows, k=3, tests="given")


@pytest.mark.slow  # loads and samples a model through the CLI: ~10 s quiet, 30 s under load
def test_synth_execution_cli_writes_rows_from_model_written_tests(model_dir, tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"prompt": "Write def add(a, b) that returns a + b."}) + "\n"
                     + json.dumps({"prompt": "Write add.", "tests": "assert add(1, 2) == 3"}) + "\n")  # fmt: skip
    out = tmp_path / "sft.jsonl"
    args = ["synth", "execution", "--model", str(model_dir), "--prompts", str(tasks), "--k", "2", "--test-samples", "2",
            "--max-new-tokens", "8", "--sft-out", str(out), "--json"]  # fmt: skip
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["problems"] == 2 and stats["given_tests"] == 1 and stats["verifier"] == "code"
    assert out.is_file()  # a random model passes nothing: the file is there, empty
    tasks.write_text(json.dumps({"prompt": "Sort a list."}) + "\n")
    assert main(args) == 2
    assert "tasks.jsonl:1" in capsys.readouterr().err
