"""Qwen3's four post-training stages (`gptqwen post`, align/post.py): the fusion data renders exactly as trl's Qwen3
template in both modes, stage settings are checked before any work, the pass-rate filter, and a stage resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import _align_fixtures
from gptqwen.align.post import fusion_conversations, instruction_prompts
from gptqwen.align.rewards import constraints_reward
from gptqwen.errors import UserError
from gptqwen.train.recipe import Recipe, load_recipe

tok, model_dir = _align_fixtures.tok, _align_fixtures.model_dir  # shared fixtures
QWEN3_JINJA = (Path(__import__("trl").__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
TINY = ["train.max_steps=2", "train.batch_size=4", "post.problems=16", "post.eval_problems=6", "post.eval_max_new_tokens=8",
        "post.pass_min=0", "post.pass_samples=2", "grpo.num_generations=2", "grpo.prompts_per_step=2",
        "grpo.max_new_tokens=8", "post.judge_steps=2", "post.judge_examples=16"]  # fmt: skip


def test_fusion_data_renders_as_the_trl_qwen3_template(tok, model_dir):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    stage = load_recipe("qwen3-post", ["post.problems=24"], trainer="post").stage(2)
    assert stage.post.kind == "fusion"
    convs = fusion_conversations(stage.post, stage.sft)
    modes = {"reasoning_content" in c["messages"][-1] for c in convs}
    assert modes == {True, False}  # both modes are in the mix
    for c in convs:
        msgs = c["messages"]
        ours = tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
        assert ours == hf.apply_chat_template(msgs, chat_template=QWEN3_JINJA, tokenize=False)
        ids, mask = tok.render_for_sft(msgs)
        assert tok.decode(ids) == ours  # what SFT trains on is that text
        reply = tok.decode([t for t, m in zip(ids, mask) if m])
        thinking = "reasoning_content" in msgs[-1]
        assert ("<think>\n\n</think>" in ours) != thinking  # non-thinking answers carry the empty think block
        assert reply.endswith(f"The answer is {c['answer']}.<|im_end|>\n") or reply.endswith(f"The answer is {c['answer']}.<|im_end|>")


def test_instruction_prompts_are_checked_by_program():
    post = load_recipe("qwen3-post", ["post.problems=30"], trainer="post").stage(3).post
    rows = instruction_prompts(post)
    assert {r["constraints"][0]["kind"] for r in rows} == {"max_words", "end_with", "uppercase"}
    by_kind = {r["constraints"][0]["kind"]: r for r in rows}
    good = {"max_words": "The answer is 4.", "end_with": "The answer is 4, done.", "uppercase": "THE ANSWER IS 4."}
    for kind, text in good.items():
        assert constraints_reward([by_kind[kind]], [text]) == [1.0]
        assert constraints_reward([by_kind[kind]], ["the answer is four, I am quite sure of it now"]) == [0.0]


def test_bad_stage_settings_fail_before_work():
    for bad, match in ((["post.pass_min=0.9", "post.pass_max=0.1"], "pass_min"), (["post.kind=sleep"], "kind"),
                       (["post.kinds=[geometry]"], "kinds")):  # fmt: skip
        with pytest.raises(UserError, match=match):
            load_recipe("qwen3-post", bad, trainer="post")


@pytest.mark.slow
def test_four_stages_and_a_stage_resumes_exactly(model_dir, tmp_path, capsys, monkeypatch):
    import io

    from gptqwen.cli import main
    from gptqwen.loading import load_model_and_tokenizer

    args = ["post", "--from", str(model_dir), "--threads", "1", "--json", *TINY]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    full = json.loads(capsys.readouterr().out)
    assert list(full["stages"]) == ["1-cold-start", "2-reasoning-rl", "3-fusion", "4-general-rl"]
    for s in full["stages"].values():
        assert s["steps"] == 2 and set(s["heldout"]) == {"thinking", "non_thinking"} and s["heldout"]["thinking"]["n"] == 6
    assert full["stages"]["2-reasoning-rl"]["pass_rates"]["problems"] == 16
    # stopped in the middle of the first stage, then resumed: the same weights at the end
    assert main([*args, "--out", str(tmp_path / "b"), "--stop-at", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["stopped_in"] == "1-cold-start"
    assert main([*args, "--out", str(tmp_path / "b"), "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    a = load_model_and_tokenizer(full["out"])[0].state_dict()
    b = load_model_and_tokenizer(resumed["out"])[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["stages"]["4-general-rl"]["heldout"] == full["stages"]["4-general-rl"]["heldout"]
    # a finished run: --resume has nothing left to do, a plain start is refused
    assert main([*args, "--out", str(tmp_path / "b"), "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"].keys() == resumed["stages"].keys()
    assert main([*args, "--out", str(tmp_path / "b")]) == 2
    assert "--resume" in capsys.readouterr().err
    # the final model chats with a thinking budget and the switches
    monkeypatch.setattr("sys.stdin", io.StringIO("/budget 2\nWhat is 1 + 2?\n/no_think\nWhat is 2 + 2?\n/exit\n"))
    assert main(["chat", "--model", full["out"], "--temperature", "0", "--max-new-tokens", "6"]) == 0
    assert "budget 2" in capsys.readouterr().out


@pytest.mark.slow
def test_general_rl_fine_tunes_its_rubric_judge(model_dir, tmp_path):
    from gptqwen.align.post import run_post

    raw = {"name": "judge", "trainer": "post", "model": {"base": str(model_dir)},
           "post": {"kind": "general_rl", "problems": 8, "eval_problems": 0, "judge_steps": 2, "judge_examples": 16},
           "grpo": {"rewards": ["math", "rbrm:reference-answer"], "num_generations": 2, "prompts_per_step": 2,
                    "max_new_tokens": 8},
           "train": {"max_steps": 2, "batch_size": 4, "sample_tokens": 0, "eval_interval": 0}}  # fmt: skip
    out = run_post(Recipe.from_dict(raw, "post"), tmp_path / "p", quiet=True)
    judge = Path(out["stages"]["run"]["judge"]["judge"])
    assert judge == tmp_path / "p" / "run" / "judge" and (judge / "model.safetensors").is_file()
    assert json.loads((judge / "sft.json").read_text())["steps"] == 2
    metrics = [json.loads(line) for line in (tmp_path / "p" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= m["reward_rbrm"] <= 1.0 for m in metrics)  # the judge's p(A) over GRPO's samples
    raw["grpo"]["rewards"] = ["math"]
    with pytest.raises(UserError, match="exactly one 'rbrm:RUBRIC'"):
        run_post(Recipe.from_dict(raw, "post"), tmp_path / "q", quiet=True)
