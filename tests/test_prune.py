"""Depth, head and width pruning (`gptqwen prune`, align/prune.py): the same shape gives the same model, dead MLP
neurons are the ones cut (the logits stay exactly), a block that passes its input through is the one removed and heads
that write nothing are the ones cut (the logits stay), a
pruned RoPE head turns at the teacher's frequencies, the loudest residual channel is kept, the CLI writes a loadable
folder with its report, and bad sizes or calibration data end in one message before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

import _align_fixtures
from gptqwen.align.prune import calibration_ids, prune_model, pruned_config
from gptqwen.cli import main
from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.model import Transformer

tok, model_dir = _align_fixtures.tok, _align_fixtures.model_dir  # shared fixtures


def _model(name: str, vocab: int, **kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(Config.from_name(name, vocab_size=vocab, **kw)).eval()


def _logits(model: Transformer, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


@pytest.mark.parametrize("name", ["qwen3-tiny", "qwen2-tiny", "gpt2-tiny", "gpt1-tiny"])
def test_same_shape_is_the_same_model(tok, name):
    teacher = _model(name, tok.vocab_size)
    rows = calibration_ids(tok, synthetic=8)
    pruned, report = prune_model(teacher, rows)
    assert report["params_after"] == report["params_before"]
    assert torch.allclose(_logits(pruned, rows[0]), _logits(teacher, rows[0]), atol=1e-6)


@pytest.mark.parametrize("name", ["qwen3-tiny", "gpt2-tiny"])
def test_dead_mlp_neurons_are_the_ones_cut(tok, name):
    teacher = _model(name, tok.vocab_size)
    width = teacher.config.intermediate_size
    dead = torch.arange(width) % 3 == 0  # a third of every layer's neurons never fire
    with torch.no_grad():
        for b in teacher.blocks:
            if name.startswith("qwen"):
                b.mlp.gate_up.weight[:width][dead] = 0  # silu(0) * up = 0
            else:
                b.mlp.fc.weight[dead] = 0
                b.mlp.fc.bias[dead] = 0  # gelu(0) = 0
    rows = calibration_ids(tok, synthetic=8)
    pruned, _ = prune_model(teacher, rows, intermediate_size=int((~dead).sum()))
    assert pruned.config.intermediate_size == int((~dead).sum())
    assert torch.allclose(_logits(pruned, rows[1]), _logits(teacher, rows[1]), atol=1e-5)


def test_pruned_rope_head_keeps_the_teachers_frequencies(tok):
    teacher = _model("qwen3-tiny", tok.vocab_size)
    pruned, report = prune_model(teacher, calibration_ids(tok, synthetic=4), head_dim=16)
    assert pruned.config.head_dim == 16 and report["rope_theta"] == [teacher.config.rope_theta, pruned.config.rope_theta]
    kept = teacher.rotary.inv_freq[:8]  # the head's 8 highest frequencies
    assert torch.allclose(pruned.rotary.inv_freq, kept, rtol=1e-5)
    # q and k keep the first 8 dimensions of each rotate-half: the rows of the fused projection that carry them
    t, p = teacher.blocks[0].attn.qkv.weight, pruned.blocks[0].attn.qkv.weight
    assert torch.equal(p[:8], t[:8]) and torch.equal(p[8:16], t[16:24])


def test_loudest_residual_channel_is_kept(tok):
    teacher = _model("qwen3-tiny", tok.vocab_size)
    with torch.no_grad():
        teacher.wte.weight[:, 77] *= 50  # channel 77 carries the most
    pruned, _ = prune_model(teacher, calibration_ids(tok, synthetic=8), n_embd=32)
    col = teacher.wte.weight[:, 77]
    assert any(torch.equal(pruned.wte.weight[:, j], col) for j in range(32))


@pytest.mark.parametrize("name", ["qwen3-tiny", "gpt2-tiny"])
def test_a_block_that_passes_its_input_through_is_the_one_removed(tok, name):
    """Block 1 with zero output projections adds nothing to the residual stream (pre-norm): its importance is 0, depth
    pruning removes exactly it, and the 3-block model computes the same logits as the 4-block one."""
    teacher = _model(name, tok.vocab_size)
    with torch.no_grad():
        for p in teacher.blocks[1].attn.proj.parameters():
            p.zero_()
        for p in (teacher.blocks[1].mlp.down if teacher.config.mlp == "swiglu" else teacher.blocks[1].mlp.proj).parameters():
            p.zero_()
    rows = calibration_ids(tok, synthetic=8)
    pruned, report = prune_model(teacher, rows, n_layer=3)
    assert report["layers_kept"] == [0, 2, 3] and report["block_importance"][1] == pytest.approx(0.0, abs=1e-6)
    assert pruned.config.n_layer == 3 and report["params_after"] < report["params_before"]
    assert torch.allclose(_logits(pruned, rows[0]), _logits(teacher, rows[0]), atol=1e-5)
    with pytest.raises(UserError, match="alternates dense and banded"):  # GPT-3's layer pattern would be reordered
        pruned_config(Config.from_name("gpt3-tiny"), n_layer=3)


def test_query_heads_that_write_nothing_are_the_ones_cut(tok):
    """Heads 0 and 3 of a 4-head, 2-KV-head model with zero output-projection columns write nothing: pruning to 2 heads
    keeps one head per KV group, heads 1 and 2, and the logits stay."""
    teacher = _model("qwen3-tiny", tok.vocab_size)
    d = teacher.config.head_dim
    with torch.no_grad():
        for h in (0, 3):
            teacher.blocks[0].attn.proj.weight[:, h * d:(h + 1) * d] = 0
            teacher.blocks[2].attn.proj.weight[:, h * d:(h + 1) * d] = 0
    rows = calibration_ids(tok, synthetic=8)
    pruned, report = prune_model(teacher, rows, n_head=2)
    assert report["heads_kept"][0] == report["heads_kept"][2] == [1, 2] and pruned.config.n_head == 2
    assert all(len(h) == 2 and h[0] in (0, 1) and h[1] in (2, 3) for h in report["heads_kept"])  # one per KV group
    kept = Transformer(teacher.config).eval()  # the teacher with the other blocks' cut heads silenced too
    kept.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        for i, heads in enumerate(report["heads_kept"]):
            for h in set(range(4)) - set(heads):
                kept.blocks[i].attn.proj.weight[:, h * d:(h + 1) * d] = 0
    assert torch.allclose(_logits(pruned, rows[0]), _logits(kept, rows[0]), atol=1e-5)
    with pytest.raises(UserError, match="multiple of the 4 KV heads"):  # GPT-2: one KV head per query head
        pruned_config(Config.from_name("gpt2-tiny"), n_head=2)


def test_cli_writes_a_loadable_folder_with_its_report(tok, model_dir, tmp_path, capsys):
    out = tmp_path / "small"
    args = ["prune", "--model", str(model_dir), "--out", str(out), "--n-layer", "3", "--n-head", "2", "--n-embd", "64",
            "--head-dim", "16", "--intermediate-size", "192", "--synthetic", "16", "--json"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    model, tok2 = load_model_and_tokenizer(str(out))
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.head_dim, c.intermediate_size) == (3, 2, 64, 16, 192)
    assert len(report["layers_kept"]) == 3 and len(report["block_importance"]) == 4
    assert model.num_params() == report["params_after"] < report["params_before"]
    assert report["flops"] == 2 * report["params_before"] * report["calibration_tokens"]  # the calibration forwards
    assert tok2.vocab_size == tok.vocab_size
    assert json.loads((out / "prune.json").read_text())["shape_after"]["n_embd"] == 64
    assert main(args) == 2 and "is not an empty folder" in capsys.readouterr().err  # no silent overwrite


def test_calibration_from_files(tok, tmp_path):
    text = tmp_path / "cal.txt"
    text.write_text("First text, one paragraph.\n\nSecond text.\n")
    assert len(calibration_ids(tok, data=str(text))) == 2
    rows = tmp_path / "cal.jsonl"
    rows.write_text(json.dumps({"text": "plain"}) + "\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    ids = calibration_ids(tok, data=str(rows))
    assert ids[0] == tok.encode("plain") and ids[1] == tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)


@pytest.mark.parametrize("shape, message", [
    ({"n_kv_head": 1}, "cannot prune n_kv_head"),
    ({"n_head": 3}, "must be a multiple of the 2 KV heads"),
    ({"n_layer": 5}, "n_layer=5 must be a whole number from 1 to the teacher's 4"),
    ({"n_embd": 512}, "n_embd=512 must be a whole number from 1 to the teacher's 128"),
    ({"head_dim": 15}, "must be even"),
    ({"intermediate_size": 0}, "from 1 to"),
])  # fmt: skip
def test_bad_widths(shape, message):
    with pytest.raises(UserError, match=message):
        pruned_config(Config.from_name("qwen3-tiny"), **shape)


def test_bad_models_and_calibration(tok, model_dir, tmp_path, capsys):
    with pytest.raises(UserError, match="mixture-of-experts"):
        pruned_config(Config.from_name("qwen3-moe-tiny"), n_embd=32)
    with pytest.raises(UserError, match="keep head_dim"):
        pruned_config(Config.from_name("qwen3-tiny", rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                                   "original_max_position_embeddings": 256}), head_dim=16)  # fmt: skip
    with pytest.raises(UserError, match="--synthetic N"):
        calibration_ids(tok)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"prompt": "no"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: a calibration row needs"):
        calibration_ids(tok, data=str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(UserError, match="has no text"):
        calibration_ids(tok, data=str(empty))
    out = tmp_path / "never"
    assert main(["prune", "--model", str(model_dir), "--out", str(out), "--n-embd", "999"]) == 2
    assert "n_embd=999" in capsys.readouterr().err and not out.exists()  # refused before any work
    assert main(["prune", "--model", str(model_dir), "--out", str(out), "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
