"""The recipe system and the training core shared by pretrain, sft and finetune.

Recipes are validated before any work (unknown keys with suggestions, types, ranges); `--print-config`
shows the resolved recipe for every trainer; the flat flags are shorthands for recipe keys; sft and
finetune write metrics.jsonl and resume exactly like pretraining; activation checkpointing applied from
outside the model changes neither the loss nor the gradients.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import gptqwen
from gptqwen.cli import main
from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.finetune.synthetic import demo_tokenizer, entailment_examples, reasoning_conversations
from gptqwen.model import Transformer
from gptqwen.train import distributed as D
from gptqwen.train.metrics import MetricsLog
from gptqwen.train.recipe import DEFAULT_RECIPES, load_recipe, recipe_names
from gptqwen.train.trainer import pretrain
from test_train import losses, tiny_data, tiny_recipe  # noqa: F401  (tiny_data is a fixture)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tok"
    demo_tokenizer(400).save(path)
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------- recipes
RECIPES = Path(gptqwen.__file__).parent / "recipes"


@pytest.mark.parametrize("trainer", ["pretrain", "sft", "finetune"])
def test_every_trainer_has_a_default_recipe(trainer):
    assert DEFAULT_RECIPES[trainer] in recipe_names(trainer)
    recipe = load_recipe(None, trainer=trainer)
    raw = yaml.safe_load((RECIPES / f"{DEFAULT_RECIPES[trainer]}.yaml").read_text())
    assert recipe.trainer == trainer and recipe.name == raw["name"]
    for key, value in raw["train"].items():  # what the file says is what the trainer gets
        assert getattr(recipe.train, key) == value, f"train.{key}"
    assert set(recipe_names(trainer)).isdisjoint(n for t in DEFAULT_RECIPES if t != trainer for n in recipe_names(t))


@pytest.mark.parametrize("trainer, override, message", [
    ("pretrain", "train.lr_max=1", "unknown train setting 'lr_max'. Did you mean: lr"),
    ("pretrain", "model.n_layers=3", "unknown model setting 'n_layers'. Did you mean: n_layer"),
    ("pretrain", "trian.lr=1", "section must be one of model, data, train. Did you mean: train"),
    ("pretrain", "model.max_seq_len=16", "train.seq_len 256 exceeds model.max_seq_len 16"),
    ("sft", "sft.packng=false", "unknown sft setting 'packng'. Did you mean: packing"),
    ("sft", "lora.rank=4", "unknown lora setting 'rank'"),
    ("finetune", "task.lm_coeff=1", "unknown task setting 'lm_coeff'. Did you mean: lm_coef"),
    ("finetune", "sft.data=x", "section must be one of model, task, train"),
    ("sft", "train.batch_size=2.5", "train.batch_size must be a whole number"),
    ("sft", "sft.packing=maybe", "sft.packing must be true or false"),
    ("finetune", "train.lr=fast", "train.lr must be a number"),
    ("sft", "sft.flag_prob=1.5", "sft.flag_prob = 1.5 is out of range; it must be in [0, 1]"),
    ("sft", "lora.r=0", "lora.r = 0 is out of range; it must be >= 1"),
    ("finetune", "task.too_long=cut", "task.too_long = 'cut' is out of range; it must be one of drop, truncate, error"),
    ("finetune", "train.epochs=0", "train.epochs = 0.0 is out of range; it must be > 0"),
])  # fmt: skip
def test_bad_recipe_values_fail_before_any_work(trainer, override, message, tmp_path, capsys):
    with pytest.raises(UserError) as err:
        load_recipe(None, [override], trainer=trainer)
    assert message in str(err.value)
    # through the CLI: one line, exit 2, nothing created (the base model is never loaded)
    extra = {"pretrain": [], "sft": ["--from", "qwen3-tiny", "--synthetic", "8"],
             "finetune": ["--from", "gpt1-tiny", "--task", "entailment", "--data", str(tmp_path / "missing.jsonl")]}[trainer]
    assert main([trainer, *extra, override, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_yaml_types_are_checked_and_trainers_not_mixed(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"trainer": "sft", "train": {"lr": "fast"}}))
    with pytest.raises(UserError, match="train.lr must be a number"):
        load_recipe(str(bad), trainer="sft")
    with pytest.raises(UserError, match="this is a sft recipe; run it with 'gptqwen sft'"):
        load_recipe(str(bad), trainer="finetune")
    with pytest.raises(UserError, match="unknown recipe 'sft-qwen3' for finetune"):
        load_recipe("sft-qwen3", trainer="finetune")


@pytest.mark.parametrize("trainer, args, expect", [
    ("pretrain", ["-c", "gpt2-shakespeare", "train.lr=1e-3", "--set", "model.n_layer=2"],
     {"train": {"lr": 1e-3}, "model": {"preset": "gpt2-tiny", "n_layer": 2}}),
    ("sft", ["--from", "qwen3-tiny", "--synthetic", "100", "--lr", "3e-3", "--warmup", "5", "--lora-targets", "q,v",
             "--no-packing", "train.activation_checkpointing=true"],
     {"model": {"base": "qwen3-tiny"}, "sft": {"synthetic": 100, "packing": False}, "lora": {"targets": ["q", "v"]},
      "train": {"lr": 3e-3, "warmup_steps": 5, "warmup_ratio": 0.0, "epochs": 2.0, "activation_checkpointing": True}}),
    ("finetune", ["--task", "entailment", "--from", "gpt1-tiny", "--warmup", "0.05", "--labels", "a,b", "--epochs", "6"],
     {"task": {"task": "entailment", "labels": ["a", "b"]}, "train": {"warmup_ratio": 0.05, "warmup_steps": 0, "epochs": 6.0,
                                                                     "schedule": "linear", "beta2": 0.999}}),
])  # fmt: skip
def test_print_config_shows_the_resolved_recipe(trainer, args, expect, tmp_path, capsys):
    assert main([trainer, *args, "--print-config", "--out", str(tmp_path / "run")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"] == trainer
    for section, values in expect.items():
        for key, value in values.items():
            assert printed[section][key] == value, (section, key)
    assert not (tmp_path / "run").exists()
    # the printed recipe is a recipe: it loads back to the same thing
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(printed))
    assert load_recipe(str(tmp_path / "r.yaml"), trainer=trainer).to_dict() == printed


def test_list_recipes_per_trainer():
    r = subprocess.run([sys.executable, "-m", "gptqwen", "sft", "--list"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "sft-qwen3" in r.stdout and "qwen3-shakespeare" not in r.stdout


# ---------------------------------------------------------------- activation checkpointing


@pytest.mark.parametrize("preset", ["qwen3-tiny", "qwen3-moe-tiny"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(preset):
    torch.manual_seed(0)
    plain = Transformer(Config.from_name(preset, n_layer=2)).train()
    wrapped = copy.deepcopy(plain)
    D.apply_activation_checkpointing(wrapped)
    assert wrapped.state_dict().keys() == plain.state_dict().keys()  # checkpoints and exports do not see it
    ids = torch.randint(0, plain.config.vocab_size, (2, 16))
    results = []
    for model in (plain, wrapped):
        torch.manual_seed(1)
        out = model(ids, targets=ids.roll(-1, 1))
        loss = out.loss + (out.aux_loss if out.aux_loss is not None else 0)
        loss.backward()
        results.append((loss.detach(), {n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b) and grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=0, atol=1e-7, msg=name)


def test_activation_checkpointing_in_the_trainer(tmp_path, tiny_data):  # noqa: F811
    pretrain(tiny_recipe(tiny_data, max_steps=3), tmp_path / "off", quiet=True)
    pretrain(tiny_recipe(tiny_data, max_steps=3, activation_checkpointing=True), tmp_path / "on", quiet=True)
    assert losses(tmp_path / "on") == pytest.approx(losses(tmp_path / "off"), abs=1e-6)


# ---------------------------------------------------------------- sft and finetune on the core


def _sft(tmp_path, tok_dir, out, *extra):
    data = tmp_path / "c.jsonl"
    if not data.exists():
        _jsonl(data, reasoning_conversations(24, seed=5))
    return main(["sft", "--data", str(data), "--from", "qwen3-tiny", "--tokenizer", str(tok_dir), "--max-len", "128",
                 "--batch-size", "4", "--max-steps", "4", "--lr", "1e-3", "--threads", "1", "--out", str(out), "--json",
                 "train.ckpt_interval=2", "train.keep_last=3", *extra])  # fmt: skip


def _finetune(tmp_path, tok_dir, out, *extra):
    data = tmp_path / "e.jsonl"
    if not data.exists():
        _jsonl(data, entailment_examples(40, seed=1))
    return main(["finetune", "--task", "entailment", "--data", str(data), "--from", "gpt1-tiny", "--tokenizer", str(tok_dir),
                 "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--threads", "1", "--out", str(out), "--json",
                 "task.dropout=0.1", *extra])  # fmt: skip


def _records(run):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in MetricsLog.read(run / "metrics.jsonl")]


@pytest.mark.parametrize("run", [_sft, _finetune], ids=["sft", "finetune"])
def test_resume_equals_an_uninterrupted_run(run, tmp_path, tok_dir, capsys):
    from safetensors.torch import load_file

    assert run(tmp_path, tok_dir, tmp_path / "full") == 0
    full = json.loads(capsys.readouterr().out)
    records = _records(tmp_path / "full")
    assert [r["step"] for r in records] == list(range(1, full["steps"] + 1)) and all("loss" in r and "lr" in r for r in records)
    assert full["step"] == full["steps"] and full["final_loss"] == records[-1]["loss"]

    assert run(tmp_path, tok_dir, tmp_path / "cut", "--stop-at", "2") == 0
    cut = json.loads(capsys.readouterr().out)
    assert cut["step"] == 2 and "out" not in cut and not (tmp_path / "cut" / "config.json").exists()  # no export yet
    assert run(tmp_path, tok_dir, tmp_path / "cut", "--stop-at", "2") == 2  # checkpoints there: refuses to clobber
    assert "--resume" in capsys.readouterr().err
    assert run(tmp_path, tok_dir, tmp_path / "cut", "--resume") == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["start_step"] == 2 and _records(tmp_path / "cut") == records  # every step, exactly
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert run(tmp_path, tok_dir, tmp_path / "cut", "--resume", "--lr", "2e-3", "train.batch_size=8") == 2
    assert "train.batch_size was" in capsys.readouterr().err  # the data order depends on it
