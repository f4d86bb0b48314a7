"""Verifiable rewards, their combination, rubric judges (RBRM) and machine-made data (rejection sampling, evolution)."""

import json
import math

import pytest
import torch

import _align_fixtures
from gptqwen.align import rbrm, synth
from gptqwen.align import rewards as R
from gptqwen.align.grpo import build_rewards, load_prompt_rows
from gptqwen.cli import main
from gptqwen.errors import UserError

tok, model_dir = _align_fixtures.tok, _align_fixtures.model_dir  # shared fixtures


@pytest.mark.parametrize("text, want", [
    ("<think>\n3 + 4 = 7.\n</think>\n\nThe answer is 7.", "7"),
    ("so \\boxed{\\frac{1}{2}} and later The answer is 3", "\\frac{1}{2}"),
    ("Answer: 1,234.", "1,234"),
    ("no answer here", None),
])  # fmt: skip
def test_extract_final_answer(text, want):
    assert R.extract_final_answer(text) == want


def test_answers_match_numbers_and_text():
    assert R.answers_match("\\frac{1}{2}", "0.5") and R.answers_match("1,234", "1234") and R.answers_match("7.0", "7")
    assert not R.answers_match("8", "7") and R.answers_match("Paris.", "paris")
    assert R.math_reward([{"answer": "12"}] * 3, ["The answer is 12.", "The answer is 13.", "twelve"]) == [1.0, 0.0, 0.0]
    with pytest.raises(UserError, match="needs an 'answer'"):
        R.math_reward([{"prompt": "x", "_where": "p.jsonl:4"}], ["The answer is 1."])


def test_math_reward_reads_the_reply_not_its_thinking():
    texts = ["<think>\n7 + 5 = 12.\n</think>\n\nThe answer is 12.",
             "<think>\n7 + 5 = 12. The answer is 12.",  # the think block never closes: the reply has no answer
             "<think>\nThe answer is 12.\n</think>\n\nThe answer is 13.",  # the reply's answer counts
             "7 + 5 = 12.\n</think>\n\nThe answer is 12."]  # the prompt opened the think block
    assert R.math_reward([{"answer": "12"}] * 4, texts) == [1.0, 0.0, 0.0, 1.0]


# (completion, the row's answer, the verdict): the built-in checker and math-verify must both give the verdict
BACKEND_CASES = [
    ("The answer is 12.", "12", True),
    ("The answer is 13.", "12", False),
    ("so \\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{\\dfrac{3}{4}} at last", "3/4", True),
    ("\\boxed{\\frac{2}{3}}", "\\frac{3}{2}", False),
    ("\\boxed{0.25}", "\\frac{1}{4}", True),
    ("\\boxed{-\\frac{6}{4}}", "-1.5", True),
    ("Answer: 1,234.", "1234", True),
    ("The answer is -7.", "-7", True),
    ("The answer is 7.0", "7", True),
    ("The answer is yes.", "Yes", True),
    ("The answer is no.", "yes", False),
    ("no answer here", "3", False),
    ("<think>\nThe answer is 5.\n</think>\n\nThe answer is 4.", "5", False),
]


def test_math_verify_backend_agrees_with_the_builtin_checker():
    pytest.importorskip("math_verify")
    rows, texts = [{"answer": a} for _, a, _ in BACKEND_CASES], [t for t, _, _ in BACKEND_CASES]
    want = [float(v) for _, _, v in BACKEND_CASES]
    assert R.math_reward(rows, texts) == want
    assert R.math_verify_reward(rows, texts) == want
    assert build_rewards(["math-verify"]).names == ["math-verify"]
    # what only the symbolic backend sees
    assert R.answers_match("2\\sqrt{2}", "\\sqrt{8}", "math-verify") and not R.answers_match("2\\sqrt{2}", "\\sqrt{8}")
    assert R.answers_match("x+1", "1+x", "math-verify")


def test_math_verify_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "math_verify", None)  # as if not installed
    with pytest.raises(UserError, match="pip install 'gptqwen\\[align\\]'"):
        build_rewards(["math-verify"])
    with pytest.raises(UserError, match="unknown math checker backend"):
        R.answers_match("1", "1", "sympy")


def test_format_reward():
    good = "<think>\nsteps\n</think>\n\nThe answer is 3."
    assert R.format_reward([{}] * 4, [good, "The answer is 3.", "<think>\nsteps\n</think>\n\n", "<think>\nno end"]) == [1, 0, 0, 0]


def test_code_reward_runs_tests_with_limits():
    row = {"tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}
    right = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    assert R.code_reward([row, row], [right, wrong]) == [1.0, 0.0]
    ok, why = R.run_python("while True: pass", timeout=1.0)
    assert not ok and "timed out" in why
    ok, _ = R.run_python("x = bytearray(2 << 30)", memory_mb=256)  # over the address-space limit
    assert not ok
    with pytest.raises(UserError, match="needs 'tests'"):
        R.code_reward([{"prompt": "x"}], ["pass"])


def test_reward_set_weights_and_bad_functions():
    rs = R.RewardSet(["a", "b"], [lambda r, c: [1.0, None], lambda r, c: [0.5, None]], [1.0, 2.0])
    totals, per_fn = rs([{}, {}], ["x", "y"])
    assert totals[0] == 2.0 and math.isnan(totals[1]) and per_fn.shape == (2, 2)

    def boom(rows, completions):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(UserError, match="reward function 'boom' raised ZeroDivisionError"):
        R.RewardSet(["boom"], [boom], [1.0])([{}], ["x"])
    with pytest.raises(UserError, match="'nan' returned nan for completion 0 of prompt row q.jsonl:3"):
        R.RewardSet(["nan"], [lambda r, c: [float("nan")]], [1.0])([{"_where": "q.jsonl:3"}], ["x"])
    with pytest.raises(UserError, match="returned 2 values for 1 completions"):
        R.RewardSet(["n"], [lambda r, c: [1.0, 2.0]], [1.0])([{}], ["x"])
    with pytest.raises(UserError, match="2 entries for 1 reward"):
        build_rewards(["math"], [1.0, 2.0])


def _rubric(tmp_path, classes, **extra):
    raw = {"name": "t", "template": "Q: {prompt}\nR: {response}\nClass:", "classes": classes, "chat": False, **extra}
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


def test_rubric_judge_probabilities_and_rules(tmp_path, model_dir):
    path = _rubric(tmp_path, {"A": 1.0, "B": -1.0}, judge=str(model_dir),
                   rules=[{"name": "sorry", "regex": "(?i)sorry", "reward": -0.5}, {"name": "long", "max_words": 3, "reward": -1}])
    rubric = rbrm.Rubric.load(str(path))
    probs = rubric.class_probs(["hi"], ["hello"])
    assert probs.shape == (1, 2) and probs.sum().item() == pytest.approx(1.0)
    rows = [{"prompt": "hi"}] * 3
    got = rubric.rewards(rows, ["hello", "sorry", "one two three four"])
    probs = rubric.class_probs(["hi"] * 3, ["hello", "sorry", "one two three four"])
    judged = [(p * torch.tensor([1.0, -1.0])).sum().item() for p in probs]
    assert got == pytest.approx([judged[0], judged[1] - 0.5, judged[2] - 1.0], abs=1e-6)


def test_rubric_bad_input(tmp_path, model_dir):
    with pytest.raises(UserError, match="no single token for class 'Zebrafish'"):
        rbrm.Rubric.load(str(_rubric(tmp_path, {"A": 1.0, "Zebrafish": 0.0}, judge=str(model_dir))))
    with pytest.raises(UserError, match="has classes but no judge"):
        rbrm.Rubric.load(str(_rubric(tmp_path, {"A": 1.0})))
    with pytest.raises(UserError, match="needs exactly one of"):
        rbrm.Rubric.from_dict({"rules": [{"name": "x", "reward": 1}]})
    with pytest.raises(UserError, match="unknown rubric 'refusal-stile'.*refusal-style"):
        rbrm.Rubric.load("refusal-stile")
    rules_only = rbrm.Rubric.from_dict({"rules": [{"verifier": "math", "reward": 2.0}, {"format": "think", "reward": -1}]})
    done = ["The answer is 4.", "<think>\nx\n</think>\n\nThe answer is 5."]
    assert rules_only.rewards([{"prompt": "q", "answer": "4"}] * 2, done) == [1.0, 0.0]


def test_rejection_sampling_rows_feed_dpo_and_sft(tok, model_dir, tmp_path, monkeypatch):
    """Sampling is replaced by fixed texts so the grading and row building are checked exactly."""
    rows = load_prompt_rows(tok, None, 2, ["arithmetic"], 0)
    answers = [r["answer"] for r in rows]
    texts = [f"The answer is {answers[0]}.", "The answer is x.", f"The answer is {answers[1]}.", f"The answer is {answers[1]}."]
    monkeypatch.setattr(synth, "sample", lambda model, tok, ids, params: ([[0]] * len(ids), texts))
    out = synth.rejection_sample(None, tok, rows, k=2)
    assert out["stats"]["pass_rate"] == 0.75 and out["stats"]["solved_problems"] == 2
    assert len(out["sft"]) == 2  # distinct accepted answers: one per problem
    assert len(out["prefs"]) == 1 and out["prefs"][0]["rejected"][0]["content"] == "The answer is x."
    path = tmp_path / "prefs.jsonl"
    synth.write_jsonl(path, out["prefs"])
    from gptqwen.align import prefs

    [pair] = prefs.load_pairs(str(path), tok, 256)[0]
    assert tok.decode(pair.chosen).endswith(f"The answer is {answers[0]}.<|im_end|>")


def test_evolve_and_synth_cli(tmp_path, capsys):
    rows = [{"prompt": [{"role": "user", "content": "What is 3 + 4?"}], "answer": "7"}] * 20
    evolved = synth.evolve(rows, seed=1)
    kinds = {e["evolution"].split(":")[0] for e in evolved}
    assert kinds == {"deepen", "constraint"}
    for e in evolved:
        if e["evolution"] == "deepen":
            q = e["prompt"][0]["content"]
            assert q.startswith("What is 3 + 4 ") and str(eval(q[8:-1])) == e["answer"]  # the new answer is right
        else:
            assert e["constraints"] and e["answer"] == "7"
    assert main(["synth", "evolve", "--n", "5", "--out", str(tmp_path / "e.jsonl")]) == 0
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 5
    capsys.readouterr()
    assert main(["synth", "rejection", "--n", "5"]) == 2
    assert "--sft-out" in capsys.readouterr().err


def test_steps_reward_checks_every_step_of_an_arithmetic_chain():
    rows = [{"prompt": [{"role": "user", "content": "What is 9 - 8 + 3?"}], "answer": "4"}] * 5
    texts = ["<think>\n9 - 8 = 1.\n1 + 3 = 4.\n</think>\n\nThe answer is 4.",
             "<think>\n9 - 8 = 2.\n2 + 3 = 4.\n</think>\n\nThe answer is 4.",  # right answer, wrong step
             "<think>\n8 - 4 = 4.\n</think>\n\nThe answer is 4.",  # another problem's chain
             "<think>\n9 - 8 = 1.\n1 + 3 = 4.\n</think>\n\nThe answer is 5.",  # right steps, wrong reply
             "<think>\n9 - 8 = 1.\n1 + 3 = 4."]  # no reply
    assert R.steps_reward(rows, texts) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert R.math_reward(rows, texts) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert R.steps_reward([{"prompt": "Is the sky blue?", "answer": "yes"}], ["The answer is yes."]) == [None]
