"""The trainer: exact resume, crash-safe checkpoints, accumulation, schedules, MoE, export, bad input."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptqwen.data.prepare import prepare
from gptqwen.data.sources import shakespeare_files, shakespeare_plain
from gptqwen.errors import UserError
from gptqwen.loading import load_tokenizer
from gptqwen.train import checkpoint as ck
from gptqwen.train.metrics import MetricsLog
from gptqwen.train.optim import build_optimizer, lr_at, param_groups
from gptqwen.train.recipe import Recipe, load_recipe, recipe_names
from gptqwen.train.trainer import pretrain, run_recipe

TINY_MODEL = {"preset": "qwen3-tiny", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "head_dim": 16, "intermediate_size": 128}
TINY_TRAIN = {"seq_len": 32, "batch_size": 4, "max_steps": 8, "lr": 1e-2, "warmup_steps": 2, "eval_interval": 4, "eval_tokens": 256,
              "sample_interval": 0, "sample_tokens": 0, "ckpt_interval": 4, "log_interval": 2, "threads": 1,
              "tensorboard": False, "peak_flops": 1e12, "keep_last": 5}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    (root / "plays.txt").write_text(shakespeare_plain(shakespeare_files()[0].read_text())[:60_000])
    prepare([str(root / "plays.txt")], root / "ds", train_vocab=320, val_fraction=0.1, block_tokens=256, progress=False)
    return root / "ds"


def tiny_recipe(data: Path, model: dict | None = None, **train) -> Recipe:
    return Recipe.from_dict({"name": "tiny", "model": model or TINY_MODEL, "data": {"dir": str(data), "sources": []},
                             "train": {**TINY_TRAIN, **train}})  # fmt: skip


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in MetricsLog.read(run / "metrics.jsonl") if "loss" in r]


def test_resume_is_bit_identical(tmp_path, tiny_data):
    full = pretrain(tiny_recipe(tiny_data), tmp_path / "full", quiet=True)
    reference = losses(tmp_path / "full")
    assert len(reference) == 8 and reference[-1] < reference[0]
    assert [p.name for p in ck.list_checkpoints(tmp_path / "full")] == ["ckpt_0000004", "ckpt_0000008"]

    run = tmp_path / "cut"
    pretrain(tiny_recipe(tiny_data), run, quiet=True, stop_at=6)  # interrupted after step 6 ...
    import shutil

    shutil.rmtree(run / "ckpt_0000006")  # ... before its step-6 checkpoint landed
    pretrain(tiny_recipe(tiny_data), run, resume=True, quiet=True)
    assert losses(run) == reference  # every step, exactly (the log was cut back to step 4)
    resumed_val = [r["val_loss"] for r in MetricsLog.read(run / "metrics.jsonl") if "val_loss" in r]
    assert resumed_val[-1] == full["val_loss"]
    a, b = ck.load_model(tmp_path / "full"), ck.load_model(run)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_grad_accumulation_matches_full_batch(tmp_path, tiny_data):
    pretrain(tiny_recipe(tiny_data, max_steps=3, micro_batch=4), tmp_path / "a", quiet=True)
    pretrain(tiny_recipe(tiny_data, max_steps=3, micro_batch=1), tmp_path / "b", quiet=True)
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), abs=1e-5)


KILL_SCRIPT = r"""
import os, signal, sys, torch
from gptqwen.train import checkpoint as ck
from gptqwen.train.recipe import Recipe
from gptqwen.train.trainer import pretrain
real_save = torch.save
def dying_save(obj, path, *a, **k):
    if "ckpt_0000008" in str(path):  # second checkpoint: write half of optim.pt, then die
        real_save(obj, path, *a, **k)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *a, **k)
torch.save = dying_save
recipe = Recipe.from_dict(eval(sys.argv[1]))
pretrain(recipe, sys.argv[2], quiet=True)
"""


def test_killed_while_checkpointing_keeps_previous(tmp_path, tiny_data):
    recipe = tiny_recipe(tiny_data).to_dict()
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, repr(recipe), str(run)], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    assert [p.name for p in ck.list_checkpoints(run)] == ["ckpt_0000004"]
    assert any(p.name.startswith(".ckpt_0000008") for p in run.iterdir())  # the half-written temp folder
    model = ck.load_model(run)
    assert model.config.n_layer == 2
    summary = pretrain(tiny_recipe(tiny_data), run, resume=True, quiet=True)
    assert summary["start_step"] == 4 and summary["step"] == 8
    assert not any(p.name.startswith(".ckpt") for p in run.iterdir())


def test_optimizer_groups_and_schedules():
    from gptqwen.config import Config
    from gptqwen.model import Transformer

    model = Transformer(Config.from_name("gpt2-tiny"))
    decay, keep = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 and "wte" not in names[id(p)] and "wpe" not in names[id(p)] for p in decay["params"])
    assert any("norm" in names[id(p)] or "ln" in names[id(p)] for p in keep["params"]) and keep["weight_decay"] == 0.0
    assert sum(p.numel() for g in (decay, keep) for p in g["params"]) == model.num_params()
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.95)
    assert lr_at(0, 1.0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_at(10, 1.0, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 100, 10, 0.1) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, 1.0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(79, 1.0, 100, 10, 0.0, "wsd", 0.2) == 1.0  # stable until the last 20%
    assert lr_at(90, 1.0, 100, 10, 0.0, "wsd", 0.2) == pytest.approx(0.5)


def test_moe_aux_loss_sample_and_outputs(tmp_path, tiny_data, capsys, monkeypatch):
    import json

    from gptqwen.train import loop

    moe = {**TINY_MODEL, "preset": "qwen3-moe-tiny", "n_experts": 4, "n_experts_per_tok": 2, "moe_intermediate_size": 32}
    recipe = tiny_recipe(tiny_data, moe, max_steps=4, sample_interval=4, sample_tokens=8, sample_prompt="ROMEO:", peak_flops=None)
    peaks = []  # without train.peak_flops MFU divides by the measured matmul peak: a fixed one here
    monkeypatch.setattr(loop, "peak_flops", lambda device, dtype: peaks.append(dtype) or 3e11)
    summary = pretrain(recipe, tmp_path / "moe")
    records = MetricsLog.read(tmp_path / "moe" / "metrics.jsonl")
    cfg = ck.load_model(tmp_path / "moe").config
    # the aux loss is logged with its coefficient; near a random router's balanced routing L_aux is about top_k
    aux = [r["aux_loss"] / cfg.router_aux_loss_coef for r in records if "aux_loss" in r]
    assert len(aux) == 4 and all(abs(a - cfg.n_experts_per_tok) < 0.2 for a in aux), aux
    logged = [r for r in records if "tokens_per_s" in r]
    assert peaks == [torch.float32] and [r["step"] for r in logged] == [2, 4]
    for r in logged:  # MFU = tokens/s x FLOPs per token (6N + attention, PaLM) / peak; both logged rounded
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * cfg.flops_per_token(32) / 3e11, abs=6e-5)
    bytes_per_token = json.loads((tiny_data / "index.json").read_text())["bytes_per_token"]
    val = next(r for r in reversed(records) if "val_loss" in r)
    assert val["val_bpb"] == pytest.approx(val["val_loss"] / math.log(2) / bytes_per_token, rel=1e-6)
    assert (tmp_path / "moe" / "loss.png").stat().st_size > 1000
    assert "sample at step 4" in capsys.readouterr().out
    assert summary["tokens_per_s"] == logged[-1]["tokens_per_s"]
    tok = load_tokenizer(tmp_path / "moe" / "ckpt_0000004")
    assert tok.vocab_size == 320


def test_export_loads_in_transformers(tmp_path, tiny_data):
    transformers = pytest.importorskip("transformers")
    from gptqwen.cli import main

    pretrain(tiny_recipe(tiny_data, max_steps=2), tmp_path / "run", quiet=True)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    ours = ck.load_model(tmp_path / "run")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, atol=1e-4, rtol=1e-4)
    theirs_tok, ours_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf"), load_tokenizer(tmp_path / "run")
    text = "ROMEO: But soft, what light through yonder window breaks?"
    assert theirs_tok.encode(text) == ours_tok.encode(text) and len(theirs_tok) == ours_tok.vocab_size == 320
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 2  # exists: nothing overwritten


@pytest.mark.parametrize("fmt", ["gathered", "sharded"])
def test_stages_chain_weights(tmp_path, tiny_data, fmt):
    raw = tiny_recipe(tiny_data, max_steps=2, ckpt_interval=0, ckpt_format=fmt).to_dict()
    long = {"name": "long", "model": {"rope_theta": 1e6, "max_seq_len": 64}, "train": {"seq_len": 64, "batch_size": 2}}
    raw["stages"] = [{"name": "one"}, long]
    results = run_recipe(Recipe.from_dict(raw), tmp_path / "staged", quiet=True)
    assert [r["step"] for r in results] == [2, 2]
    one = losses(tmp_path / "staged" / "one")
    two = losses(tmp_path / "staged" / "long")
    assert two[0] < one[0]  # stage 2 starts from stage 1's weights, not from scratch
    model = ck.load_model(tmp_path / "staged")  # the run folder resolves to the last stage
    assert model.config.rope_theta == 1e6 and model.config.max_seq_len == 64


# ---------------------------------------------------------------- bad input


def test_resume_with_other_model_config_refused(tmp_path, tiny_data):
    run = tmp_path / "run"
    pretrain(tiny_recipe(tiny_data, max_steps=2), run, quiet=True)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    with pytest.raises(UserError, match=r"model config differs.*n_layer: 2 -> 3"):
        pretrain(tiny_recipe(tiny_data, {**TINY_MODEL, "n_layer": 3}, max_steps=4), run, resume=True, quiet=True)
    with pytest.raises(UserError, match="train.seed was 1337"):
        pretrain(tiny_recipe(tiny_data, max_steps=4, seed=7), run, resume=True, quiet=True)
    with pytest.raises(UserError, match="already holds checkpoints"):
        pretrain(tiny_recipe(tiny_data, max_steps=4), run, quiet=True)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before



def test_out_holding_a_model_is_not_overwritten(tmp_path, tiny_data):
    model_dir = tmp_path / "my-model"  # a user's checkpoint folder given as --out by mistake
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"user weights")
    (model_dir / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"already holds config.json, model.safetensors and no checkpoints"):
        pretrain(tiny_recipe(tiny_data, max_steps=2), model_dir, quiet=True)
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]
    assert (model_dir / "model.safetensors").read_bytes() == b"user weights"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine")  # other files are left alone and do not block a run
    pretrain(tiny_recipe(tiny_data, max_steps=2), tmp_path / "notes", quiet=True)
    assert (tmp_path / "notes" / "readme.txt").read_text() == "mine"

def test_recipes_and_overrides():
    assert {"qwen3-shakespeare", "gpt2-shakespeare", "qwen3-moe-shakespeare", "qwen3-3stage"} <= set(recipe_names())
    for trainer in ("pretrain", "sft", "finetune"):
        for name in recipe_names(trainer):
            r = load_recipe(name, trainer=trainer)
            for i in range(len(r.stages)):
                r.stage(i)
    r = load_recipe(None, ["train.lr=3e-4", "max_steps=7", "model.n_layer=6", "train.compile=true"])
    assert r.train.lr == 3e-4 and r.train.max_steps == 7 and r.model["n_layer"] == 6 and r.train.compile is True
    staged = load_recipe("qwen3-3stage", ["train.seq_len=128"])
    assert staged.stage(2).train.seq_len == 128
    for bad, msg in [("train.lr=-1", "out of range"), ("train.batch_size=0", "out of range"), ("train.schedule=step", "one of cosine"),
                     ("train.lr=fast", "must be a number"), ("train.bogus=1", "unknown train setting"), ("nonsense", "key=value"),
                     ("data.val_fraction=1", "out of range"), ("optim.lr=1", "section must be")]:  # fmt: skip
        with pytest.raises(UserError, match=msg):
            load_recipe(None, [bad])
    with pytest.raises(UserError, match="unknown recipe"):
        load_recipe("qwen3-shakespear")


def test_cli_errors_are_one_line(tmp_path, tiny_data, capsys):
    from gptqwen.cli import main

    for args in (["pretrain", "train.lr=0"], ["pretrain", "--config", str(tmp_path / "missing.yaml")],
                 ["pretrain", "model.n_layers=3", f"data.dir={tiny_data}", "data.sources=[]", "--out", str(tmp_path / "r")],
                 ["export", str(tmp_path), str(tmp_path / "hf")]):  # fmt: skip
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()
    r = subprocess.run([sys.executable, "-m", "gptqwen", "pretrain", "train.max_steps=0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: train.max_steps = 0 is out of range; it must be >= 1"


def test_pretrain_cli_list():
    r = subprocess.run([sys.executable, "-m", "gptqwen", "pretrain", "--list"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "qwen3-shakespeare" in r.stdout and "qwen3-3stage" in r.stdout
