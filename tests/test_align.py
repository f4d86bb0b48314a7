"""Alignment trainers end to end on a tiny model: preference rows, DPO (full and LoRA), reward model, GRPO, bad input."""

import json

import pytest
import torch

import _align_fixtures
from gptqwen.align import prefs
from gptqwen.align.grpo import load_prompt_rows
from gptqwen.align.reward import load_reward_model
from gptqwen.cli import main
from gptqwen.errors import UserError

Q = [{"role": "user", "content": "What is 2 + 3?"}]

tok, model_dir = _align_fixtures.tok, _align_fixtures.model_dir  # shared fixtures


def _pref_rows(n=12):
    rows = []
    for i in range(n):
        a, b = i % 5, i % 4
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
                     "chosen": [{"role": "assistant", "content": f"The answer is {a + b}."}],
                     "rejected": [{"role": "assistant", "content": f"The answer is {a + b + 1}."}]})
    return rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("thinking", [True, False])
def test_chat_pair_prompt_is_the_generation_prompt(tok, thinking):
    """The completion is the final assistant turn as SFT renders it; the prompt is exactly what the engine is given."""
    msg = {"role": "assistant", "content": "The answer is 5.", **({"reasoning_content": "2 + 3 = 5."} if thinking else {})}
    prompt, completion = prefs.encode_chat(tok, Q, [msg], "x", enable_thinking=thinking)
    assert prompt == tok.apply_chat_template(Q, tokenize=True, add_generation_prompt=True, enable_thinking=thinking)
    want = "<think>\n2 + 3 = 5.\n</think>\n\nThe answer is 5.<|im_end|>" if thinking else "The answer is 5.<|im_end|>"
    assert tok.decode(completion) == want


def test_row_formats_and_collate(tok):
    text = prefs.encode_row(tok, {"prompt": "2+3=", "chosen": "5", "rejected": "6", "margin": 1.5}, "x")
    assert text.chosen[-1] == tok.eos_id and text.margin == 1.5
    implicit = prefs.encode_row(tok, {"chosen": Q + [{"role": "assistant", "content": "The answer is 5."}],
                                      "rejected": Q + [{"role": "assistant", "content": "The answer is 6."}]}, "x")
    explicit = prefs.encode_row(tok, _pref_rows(4)[2] | {"prompt": Q, "chosen": [{"role": "assistant", "content": "The answer is 5."}],
                                                          "rejected": [{"role": "assistant", "content": "The answer is 6."}]}, "x")
    assert implicit == explicit
    batch = prefs.collate([text, explicit])
    assert batch["input_ids"].shape[0] == 4 and batch["margin"].tolist() == [1.5, 0.0]
    # targets sit on the completion tokens, shifted by one
    row = batch["targets"][1]  # rows: chosen, chosen, rejected, rejected
    assert [t for t in row.tolist() if t != prefs.IGNORE] == explicit.chosen


@pytest.mark.parametrize("row, message", [
    ({"prompt": "x", "chosen": "y"}, "missing 'rejected'"),
    ({"prompt": "x", "chosen": "y", "rejected": "  "}, "'rejected' is an empty completion"),
    ({"prompt": "x", "chosen": "y", "rejected": [{"role": "assistant", "content": "z"}]}, "both be text"),
    ({"prompt": "x", "chosen": "y", "rejected": "z", "margin": "big"}, "'margin' must be a finite number"),
    ({"prompt": Q, "chosen": [{"role": "assistant", "content": ""}], "rejected": [{"role": "assistant", "content": "z"}]},
     "assistant message is empty"),
    ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "share no prompt messages"),
])  # fmt: skip
def test_bad_preference_rows_name_the_row(tok, tmp_path, row, message):
    path = _write(tmp_path / "p.jsonl", _pref_rows(2) + [row])
    with pytest.raises(UserError, match=message) as e:
        prefs.load_pairs(str(path), tok, 256)
    assert f"{path}:3" in str(e.value)


@pytest.mark.slow
def test_dpo_starts_at_log2_and_learns(model_dir, tmp_path, capsys):
    data = _write(tmp_path / "p.jsonl", _pref_rows())
    out = _run_json(capsys, ["dpo", "--from", str(model_dir), "--data", str(data), "--eval", str(data), "--out",
                             str(tmp_path / "dpo"), "--max-steps", "8", "--batch-size", "4", "--lr", "3e-3", "--json"])
    first = json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)  # the policy equals the reference at step 0
    # measured 0.833 (10 of 12 pairs) and a margin of 0.047 nats at this seed: chance is 0.5 and 0
    assert out["dev_reward_accuracy"] >= 0.75 and out["dev_margin"] > 0.02
    assert (tmp_path / "dpo" / "dpo.json").is_file() and (tmp_path / "dpo" / "config.json").is_file()


@pytest.mark.slow
def test_dpo_lora_reference_is_adapters_off_and_resume_is_exact(model_dir, tmp_path, capsys):
    data = _write(tmp_path / "p.jsonl", _pref_rows())
    args = ["dpo", "--from", str(model_dir), "--data", str(data), "--max-steps", "4", "--batch-size", "4", "--lr", "1e-2",
            "--lora-r", "4", "--loss", "ipo", "--json"]
    full = _run_json(capsys, [*args, "--out", str(tmp_path / "a")])
    assert full["lora"]["r"] == 4
    first = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["reward_chosen"] == 0 and first["reward_rejected"] == 0  # adapters start at zero: policy = reference
    _run_json(capsys, [*args, "--out", str(tmp_path / "b"), "--stop-at", "2"])
    resumed = _run_json(capsys, [*args, "--out", str(tmp_path / "b"), "--resume"])
    assert resumed["loss"] == pytest.approx(full["loss"], abs=1e-6)


@pytest.mark.slow
def test_reward_model_trains_saves_and_scores(model_dir, tmp_path, capsys):
    data = _write(tmp_path / "p.jsonl", _pref_rows())
    out = _run_json(capsys, ["reward", "train", "--from", str(model_dir), "--data", str(data), "--eval", str(data),
                             "--out", str(tmp_path / "rm"), "--max-steps", "12", "--batch-size", "6", "--lr", "3e-3",
                             "--center-coef", "0.01", "--json"])
    scored = _run_json(capsys, ["reward", "score", "--model", str(tmp_path / "rm"), "--data", str(data), "--json"])
    assert scored["accuracy"] == pytest.approx(out["dev_accuracy"], abs=1e-6)
    rm, tok = load_reward_model(str(tmp_path / "rm"))
    pair = prefs.encode_row(tok, _pref_rows(1)[0], "x")
    assert len(rm.score_sequences([pair.prompt_chosen + pair.chosen])) == 1
    assert main(["reward", "score", "--model", str(model_dir), "--data", str(data)]) == 2  # not a reward model
    assert "not a reward model" in capsys.readouterr().err


@pytest.mark.slow
def test_grpo_runs_logs_rewards_and_resumes(model_dir, tmp_path, capsys):
    args = ["grpo", "--from", str(model_dir), "--synthetic", "40", "--max-steps", "4", "--num-generations", "4",
            "--prompts-per-step", "2", "--max-new-tokens", "8", "--rewards", "math,format", "--reward-weights", "1,0.5",
            "--num-iterations", "2", "--beta", "0.04", "--lr", "1e-3", "--json"]  # fmt: skip
    full = _run_json(capsys, [*args, "--out", str(tmp_path / "a")])
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "reward_math", "reward_format", "kl", "clip_low", "zero_variance"} <= records[-1].keys()
    assert records[0]["kl"] == 0  # the policy starts as the reference
    _run_json(capsys, [*args, "--out", str(tmp_path / "b"), "--stop-at", "3"])  # in the middle of a μ = 2 batch
    resumed = _run_json(capsys, [*args, "--out", str(tmp_path / "b"), "--resume"])
    assert resumed["loss"] == pytest.approx(full["loss"], abs=1e-6) and resumed["reward"] == full["reward"]


def test_grpo_bad_input(model_dir, tmp_path, capsys):
    bad = _write(tmp_path / "q.jsonl", [{"prompt": "x", "answer": "1"}, {"question": "y"}])
    assert main(["grpo", "--from", str(model_dir), "--prompts", str(bad), "--out", str(tmp_path / "g")]) == 2
    assert f"{bad}:2: each row needs a 'prompt'" in capsys.readouterr().err
    assert main(["grpo", "--from", str(model_dir), "--synthetic", "8", "--rewards", "mth", "--out", str(tmp_path / "g")]) == 2
    assert "unknown reward 'mth'" in capsys.readouterr().err
    assert main(["grpo", "--from", str(model_dir), "grpo.num_generations=1", "--synthetic", "8"]) == 2
    assert "grpo.num_generations" in capsys.readouterr().err


def test_tokenizer_model_mismatch_is_refused(model_dir, tmp_path, capsys):
    data = _write(tmp_path / "p.jsonl", _pref_rows(2))
    assert main(["dpo", "--from", "qwen3-tiny", "--tokenizer", "qwen", "--data", str(data), "--out", str(tmp_path / "d")]) == 2
    assert "embedding rows" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_prompt_rows_render_the_generation_prompt(tok):
    rows = load_prompt_rows(tok, None, 3, ["arithmetic"], 0, enable_thinking=False)
    assert all(r["_prompt_ids"] == tok.apply_chat_template(r["prompt"], tokenize=True, enable_thinking=False) for r in rows)
    assert all("answer" in r for r in rows)


def test_query_selection_drops_agreeing_groups_and_orders_by_variance(tok, tmp_path, monkeypatch):
    """Qwen2.5: groups whose rewards are all equal carry no signal; the rest train highest variance first."""
    from gptqwen.align import grpo
    from gptqwen.train.recipe import load_recipe

    rows = [{"prompt": f"q{i}", "answer": "1", "_prompt_ids": [5 + i], "_where": f"p:{i}"} for i in range(3)]
    texts = ["The answer is 1."] * 4 + ["The answer is 1."] + ["no"] * 3 + ["The answer is 1."] * 2 + ["no"] * 2
    monkeypatch.setattr(grpo, "sample", lambda model, tok, ids, params, native=True: ([[7, 8]] * len(ids), texts))
    recipe = load_recipe("grpo-qwen3", ["grpo.num_generations=4", "grpo.prompts_per_step=3", "grpo.query_selection=true",
                                        "grpo.prompts=x"], trainer="grpo")
    roll = grpo.Rollouts(recipe, None, tok, rows, grpo.build_rewards(["math"]), None, tmp_path, torch.device("cpu"), False)
    monkeypatch.setattr(roll, "prompts_of", lambda k: rows)
    [batch], stats = roll.generate(0)
    assert stats["zero_variance"] == pytest.approx(1 / 3)
    assert batch["input_ids"].shape[0] == 8  # group 0 (all right) dropped
    assert batch["input_ids"][:4, 0].tolist() == [7] * 4 and batch["advantages"][:4].tolist() == pytest.approx(
        grpo.group_advantages(torch.tensor([1.0, 1, 0, 0]), 4).tolist())  # variance 0.25 (group 2) first
    assert batch["advantages"][4:].tolist() == pytest.approx(grpo.group_advantages(torch.tensor([1.0, 0, 0, 0]), 4).tolist())


def test_grpo_log_probs_are_those_of_the_sampling_temperature(model_dir, tok, tmp_path):
    """Completions drawn at T are scored by log-softmax(logits / T), for the ratio's old and the KL's reference
    log-probs as for the policy's (as TRL does)."""
    from gptqwen.align import grpo, prefs
    from gptqwen.loading import load_model_and_tokenizer
    from gptqwen.train.recipe import load_recipe

    model, _ = load_model_and_tokenizer(str(model_dir))
    recipe = load_recipe("grpo-qwen3", ["grpo.temperature=0.5", "grpo.num_iterations=2", "grpo.beta=0.1", "grpo.prompts=x"],
                         trainer="grpo")  # fmt: skip
    roll = grpo.Rollouts(recipe, model, tok, [], grpo.build_rewards(["math"]), None, tmp_path, torch.device("cpu"), False)
    batch = prefs.collate_sequences([([5, 6, 7], [8, 9]), ([5], [8, 9, 10])], 0)
    got = roll.logps(batch)
    with torch.no_grad():
        want = prefs.token_logps(model.eval()(batch["input_ids"]).logits / 0.5, batch["targets"])
    assert torch.allclose(got["old"], want, atol=1e-6) and torch.allclose(got["ref"], want, atol=1e-6)
    assert not torch.allclose(want, prefs.token_logps(model(batch["input_ids"]).logits, batch["targets"]), atol=1e-3)
