"""Chat SFT: assistant-only targets, BFD packing equals unpacked loss, bad conversations, the CLI."""

import json
import random

import pytest
import torch

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.finetune import sft
from gptqwen.finetune.sft_train import batch_loss
from gptqwen.finetune.synthetic import demo_tokenizer, reasoning_conversations
from gptqwen.model import Transformer


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer(400)


def _targets_text(tok, ex):
    return tok.decode([t for t in ex.targets if t != sft.IGNORE])


def test_targets_cover_exactly_the_assistant_tokens(tok):
    think = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "reasoning_content": "2 + 3 = 5.", "content": "The answer is 5."},
    ]}
    ex = sft.render_example(tok, think["messages"])
    assert ex.thinking
    assert _targets_text(tok, ex) == "<think>\n2 + 3 = 5.\n</think>\n\nThe answer is 5.<|im_end|>"
    # the targets are the assistant span of the rendered ids, shifted by one (position t predicts t+1)
    text = tok.decode(ex.ids)
    assert text.endswith("<|im_start|>assistant\n<think>\n2 + 3 = 5.\n</think>\n\nThe answer is 5.<|im_end|>\n")
    first = next(t for t, y in enumerate(ex.targets) if y != sft.IGNORE)
    assert tok.decode(ex.ids[: first + 1]).endswith("<|im_start|>assistant\n")
    # /no_think soft switch: the model learns to write the empty think block itself
    flagged = [{"role": "user", "content": "What is 2 + 3? /no_think"}, {"role": "assistant", "content": "The answer is 5."}]
    assert _targets_text(tok, sft.render_example(tok, flagged)) == "<think>\n\n</think>\n\nThe answer is 5.<|im_end|>"
    # no flag and no reasoning: the hard switch, where the template supplies the empty think block
    plain = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "The answer is 5."}]
    ex = sft.render_example(tok, plain)
    assert not ex.thinking and _targets_text(tok, ex) == "The answer is 5.<|im_end|>"
    assert tok.decode(ex.ids).endswith("<think>\n\n</think>\n\nThe answer is 5.<|im_end|>\n")


def test_multi_turn_and_tool_calls_are_all_learned(tok):
    msgs = [
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "It is 5."},
    ]
    sft.validate_conversation({"messages": msgs}, "x")
    text = _targets_text(tok, sft.render_example(tok, msgs, tools=[{"type": "function", "function": {"name": "add"}}]))
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>' in text
    assert text.endswith("It is 5.<|im_end|>") and "<tool_response>" not in text and "Add 2" not in text


def test_mode_flags_are_added_only_where_no_switch_is_in_force():
    m = lambda s: [{"role": "user", "content": s}, {"role": "assistant", "content": "ok"}]  # noqa: E731
    assert sft.add_mode_flag(m("hi"), thinking=False)[0]["content"] == "hi /no_think"
    assert sft.add_mode_flag(m("hi"), thinking=True)[0]["content"] == "hi /think"
    assert sft.add_mode_flag(m("hi /think"), thinking=False)[0]["content"] == "hi /think"


def test_pack_bfd_best_fit_decreasing():
    assert sft.pack_bfd([4, 3, 2, 1, 1], 4) == [[0], [1, 3], [2, 4]]
    assert sft.pack_bfd([5, 5, 3, 3, 2], 8) == [[0, 2], [1, 3], [4]]
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(300)]
    bins = sft.pack_bfd(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    with pytest.raises(ValueError):
        sft.pack_bfd([65], 64)


def test_pack_bfd_same_bins_as_trl(seed=1):
    datasets = pytest.importorskip("datasets")
    from trl.data_utils import pack_dataset

    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(300)]
    ds = datasets.Dataset.from_dict({"input_ids": [[i] * n for i, n in enumerate(lengths)]})
    packed = pack_dataset(ds, 64, strategy="bfd")
    theirs = []
    for row, seq_lengths in zip(packed["input_ids"], packed["seq_lengths"]):
        starts = [sum(seq_lengths[:k]) for k in range(len(seq_lengths))]
        theirs.append([row[s] for s in starts])  # each sequence is filled with its own index
    assert sft.pack_bfd(lengths, 64) == theirs


def test_collate_positions_restart_and_documents_are_separate():
    exs = [sft.Example([1, 2, 3], [2, 3, -100]), sft.Example([4, 5], [5, -100])]
    b = sft.collate(exs, [[0, 1]], pad_id=0)
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b["document_ids"].tolist() == [[0, 0, 0, 1, 1]]
    assert b["targets"].tolist() == [[2, 3, -100, 5, -100]]


@pytest.mark.parametrize("preset", ["qwen3-tiny", "gpt2-tiny", "qwen3-moe-tiny"])
def test_packed_and_unpacked_batches_give_the_same_loss(tok, preset):
    torch.manual_seed(0)
    model = Transformer(Config.from_name(preset)).eval()
    rows = list(enumerate(reasoning_conversations(12, seed=3), 1))
    examples, _ = sft.build_examples(tok, rows, 256, "x", flag_prob=0.0)
    [packed] = sft.make_batches(examples, 256, batch_size=100, packing=True)
    [unpacked] = sft.make_batches(examples, 256, batch_size=100, packing=False)
    assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]
    with torch.no_grad():
        lp, lu = batch_loss(model, packed), batch_loss(model, unpacked)
    torch.testing.assert_close(lp["ce"], lu["ce"], atol=1e-5, rtol=1e-5)
    if "aux" in lp:  # MoE: the balancing loss sees the same real tokens either way
        torch.testing.assert_close(lp["aux"], lu["aux"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("messages,match", [
    ([{"role": "user", "content": "hi"}], "no assistant turn"),
    ([{"role": "assistant", "content": "hi"}], "roles out of order"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}],
     "roles out of order"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "5"}, {"role": "assistant", "content": "b"}],
     "roles out of order"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}],
     "roles out of order"),
    ([{"role": "robot", "content": "a"}], "role 'robot'"),
    ([{"role": "user"}, {"role": "assistant", "content": "b"}], "needs a string 'content'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reasoning_content": 3}], "reasoning_content"),
    ([], "non-empty 'messages'"),
])
def test_bad_conversations(messages, match):
    with pytest.raises(UserError, match=match):
        sft.validate_conversation({"messages": messages}, "f.jsonl:7")


def test_too_long_conversations_drop_truncate_error(tok):
    rows = list(enumerate(reasoning_conversations(6, seed=0), 1))
    lengths = [len(sft.render_example(tok, r["messages"]).ids) for _, r in rows]
    limit = sorted(lengths)[3]
    exs, stats = sft.build_examples(tok, rows, limit, "f", too_long="drop")
    assert stats.dropped_too_long == sum(n > limit for n in lengths) > 0 and len(exs) == stats.kept
    assert stats.skipped_lines == [i for i, n in enumerate(lengths, 1) if n > limit]
    exs, stats = sft.build_examples(tok, rows, limit, "f", too_long="truncate")
    assert stats.truncated == sum(n > limit for n in lengths) and all(len(e.ids) <= limit for e in exs)
    with pytest.raises(UserError, match="more than the context"):
        sft.build_examples(tok, rows, limit, "f", too_long="error")


def test_cli_sft_full_and_lora(tok, tmp_path, capsys):
    from gptqwen.cli import main
    from gptqwen.loading import load_model_and_tokenizer

    tok.save(tmp_path / "tok")
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in reasoning_conversations(24, seed=5)))
    common = ["--data", str(data), "--from", "qwen3-tiny", "--tokenizer", str(tmp_path / "tok"),
              "--max-len", "128", "--batch-size", "4", "--max-steps", "3", "--lr", "1e-3", "--threads", "1", "--json"]
    assert main(["sft", *common, "--out", str(tmp_path / "full")]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["kept"] == 24 and full["steps"] == 3 and full["thinking"] + full["direct"] == 24
    model, t2 = load_model_and_tokenizer(str(tmp_path / "full"))
    assert t2 is not None and model.config.vocab_size == 512
    assert main(["sft", *common, "--out", str(tmp_path / "lora"), "--lora-r", "4", "--lora-targets", "q,v"]) == 0
    lo = json.loads(capsys.readouterr().out)
    assert lo["trainable_params"] < full["trainable_params"] / 10 and lo["lora"]["layers"] == 4
    assert (tmp_path / "lora" / "adapter" / "adapter_model.safetensors").exists()  # PEFT format (test_peft.py)
    model, _ = load_model_and_tokenizer(str(tmp_path / "lora"))  # merged: a plain checkpoint


def test_cli_sft_bad_input(tmp_path, capsys):
    from gptqwen.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    assert main(["sft", "--data", str(bad), "--from", "qwen3-tiny", "--tokenizer", "qwen", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1" in err and "no assistant turn" in err and not (tmp_path / "o").exists()
    assert main(["sft", "--from", "qwen3-tiny", "--out", str(tmp_path / "o")]) == 2
    assert "--data FILE or --synthetic N" in capsys.readouterr().err
