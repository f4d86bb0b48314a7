"""Sharded checkpoints (train.ckpt_format=sharded, torch.distributed.checkpoint): exact resume, keep-last-N,
crash safety, corrupt files, export and consolidation; under torchrun with FSDP2, resharding to one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptqwen.errors import UserError
from gptqwen.train import checkpoint as ck
from gptqwen.train.trainer import pretrain
from test_train import TINY_MODEL, losses, tiny_data, tiny_recipe  # noqa: F401  (tiny_data is a fixture)

SHARDED = {"max_steps": 4, "ckpt_interval": 2, "eval_interval": 2, "ckpt_format": "sharded"}


def same_weights(a: torch.nn.Module, b: torch.nn.Module, tol: float = 0.0) -> bool:
    return all((x - y).abs().max() <= tol for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, tiny_data) -> Path:  # noqa: F811
    run = tmp_path_factory.mktemp("sharded") / "run"
    pretrain(tiny_recipe(tiny_data, keep_last=1, **SHARDED), run, quiet=True)
    return run


def test_sharded_resume_is_bit_identical(tmp_path, tiny_data, sharded_run):  # noqa: F811
    assert [p.name for p in ck.list_checkpoints(sharded_run)] == ["ckpt_0000004"]  # keep_last=1 pruned step 2
    ckpt = ck.list_checkpoints(sharded_run)[-1]
    assert ck.is_sharded(ckpt) and not (ckpt / "model.safetensors").exists()
    assert {p.name for p in ckpt.iterdir()} == {"dcp", "rank_0.json", "state.json"}
    assert ck.read_state(ckpt)["format"] == "sharded"

    run = tmp_path / "cut"
    pretrain(tiny_recipe(tiny_data, **SHARDED), run, quiet=True, stop_at=3)  # checkpoints at 2 and 3 ...
    shutil.rmtree(run / "ckpt_0000003")  # ... the step-3 one never landed
    pretrain(tiny_recipe(tiny_data, **SHARDED), run, resume=True, quiet=True)
    assert losses(run) == losses(sharded_run)
    assert same_weights(ck.load_model(run), ck.load_model(sharded_run))

    # a gathered run of the same recipe is the same training; a gathered checkpoint resumes into sharded
    gathered = tmp_path / "gathered"
    pretrain(tiny_recipe(tiny_data, **{**SHARDED, "ckpt_format": "gathered"}), gathered, quiet=True, stop_at=2)
    pretrain(tiny_recipe(tiny_data, **SHARDED), gathered, resume=True, quiet=True)
    assert losses(gathered) == losses(sharded_run)
    assert [ck.is_sharded(p) for p in ck.list_checkpoints(gathered)] == [False, True]


def test_sharded_export_and_consolidation(tmp_path, sharded_run):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from gptqwen import from_pretrained
    from gptqwen.cli import main

    ours = ck.load_model(sharded_run)
    assert main(["export", str(sharded_run), str(tmp_path / "hf")]) == 0
    assert same_weights(from_pretrained(tmp_path / "hf"), ours)
    # torch's own converter turns the DCP folder into one torch.save file with the same weights
    dcp_to_torch_save(ck.list_checkpoints(sharded_run)[-1] / "dcp", tmp_path / "full.pt")
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    assert all(torch.equal(full["model"][k], v) for k, v in ours.state_dict().items())
    assert set(full["optim"]["state"]) == {n for n, _ in ours.named_parameters()}


def test_corrupt_sharded_checkpoint(tmp_path, tiny_data, sharded_run, capsys):  # noqa: F811
    from gptqwen.cli import main

    run = tmp_path / "run"
    shutil.copytree(sharded_run, run)
    data = run / "ckpt_0000004" / "dcp" / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:1000])  # truncated: model and optimizer tensors cut off
    files = lambda: {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    with pytest.raises(UserError, match=r"sharded checkpoint .*ckpt_0000004 cannot be read"):
        pretrain(tiny_recipe(tiny_data, **{**SHARDED, "max_steps": 6}), run, resume=True, quiet=True)
    assert main(["export", str(run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sharded checkpoint") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()
    (run / "ckpt_0000004" / "dcp" / ".metadata").unlink()
    with pytest.raises(UserError, match="cannot be read"):
        ck.load_model(run)
    with pytest.raises(UserError, match=r"model config differs.*n_layer: 2 -> 3"):
        pretrain(tiny_recipe(tiny_data, {**TINY_MODEL, "n_layer": 3}, **SHARDED), run, resume=True, quiet=True)
    before.pop(run / "ckpt_0000004" / "dcp" / ".metadata")
    assert files() == before


KILL_SCRIPT = r"""
import os, signal, sys
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from gptqwen.train.recipe import Recipe
from gptqwen.train.trainer import pretrain
real_finish = FileSystemWriter.finish
def dying_finish(self, metadata, results):  # the second checkpoint: shards written, .metadata not yet
    if "ckpt_0000004" in str(self.path):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_finish(self, metadata, results)
FileSystemWriter.finish = dying_finish
pretrain(Recipe.from_dict(eval(sys.argv[1])), sys.argv[2], quiet=True)
"""


def test_killed_while_writing_sharded_keeps_previous(tmp_path, tiny_data, sharded_run):  # noqa: F811
    run = tmp_path / "run"
    recipe = tiny_recipe(tiny_data, **SHARDED)
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, repr(recipe.to_dict()), str(run)], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    assert [p.name for p in ck.list_checkpoints(run)] == ["ckpt_0000002"]
    assert any(p.name.startswith(".ckpt_0000004") for p in run.iterdir())  # the half-written temp folder
    assert ck.load_model(run).config.n_layer == 2
    summary = pretrain(recipe, run, resume=True, quiet=True)
    assert summary["start_step"] == 2 and losses(run) == losses(sharded_run)
    assert not any(p.name.startswith(".ckpt") for p in run.iterdir())


TORCHRUN_SCRIPT = r"""
import sys
import torch.distributed as dist
from gptqwen.train.recipe import Recipe
from gptqwen.train.trainer import pretrain
recipe, root = Recipe.from_dict(eval(sys.argv[1])), sys.argv[2]
dist.init_process_group("gloo")  # one group for all three runs: pretrain leaves a group it did not create
pretrain(recipe, f"{root}/full", quiet=True)
pretrain(recipe, f"{root}/cut", quiet=True, stop_at=2)
pretrain(recipe, f"{root}/cut", quiet=True, resume=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_fsdp_sharded_resume_and_reshard(tmp_path, tiny_data, sharded_run):  # noqa: F811
    recipe = tiny_recipe(tiny_data, dist="fsdp", **SHARDED)
    (tmp_path / "drive.py").write_text(TORCHRUN_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(tmp_path / "drive.py"), repr(recipe.to_dict()), str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = ck.list_checkpoints(tmp_path / "cut")[-1]
    assert {p.name for p in ckpt.iterdir()} == {"dcp", "rank_0.json", "rank_1.json", "state.json"}
    assert len(list((ckpt / "dcp").glob("*.distcp"))) == 2  # each rank wrote its own shards
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")  # bit-identical resume under torchrun
    assert losses(tmp_path / "full") == pytest.approx(losses(sharded_run), abs=1e-5)  # = one process
    assert same_weights(ck.load_model(tmp_path / "full"), ck.load_model(sharded_run), tol=1e-4)

    # the 2-process checkpoint at step 2 resumes in one process: DCP reshards model and optimizer
    single = tmp_path / "single"
    shutil.copytree(tmp_path / "cut", single)
    shutil.rmtree(single / "ckpt_0000004")
    pretrain(tiny_recipe(tiny_data, **SHARDED), single, resume=True, quiet=True)
    assert losses(single) == pytest.approx(losses(tmp_path / "full"), abs=1e-5)
