"""torchrun: DDP and FSDP2 with 2 gloo processes give the single-process losses (same global batch)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from gptqwen.train import checkpoint as ck
from gptqwen.train.metrics import MetricsLog
from gptqwen.train.trainer import pretrain
from test_train import losses, tiny_data, tiny_recipe  # noqa: F401  (tiny_data is a fixture)


def _torchrun(recipe_file, out, *overrides) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "gptqwen", "pretrain", "--config", str(recipe_file), "--out", str(out), "--quiet", *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_torchrun_matches_single_process(tmp_path, tiny_data, strategy):  # noqa: F811
    recipe = tiny_recipe(tiny_data, max_steps=4, ckpt_interval=0, eval_interval=2)
    single = pretrain(recipe, tmp_path / "single", quiet=True)
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe.to_dict()))
    _torchrun(recipe_file, tmp_path / strategy, f"train.dist={strategy}")
    assert losses(tmp_path / strategy) == pytest.approx(losses(tmp_path / "single"), abs=1e-5)

    val = [r["val_loss"] for r in MetricsLog.read(tmp_path / strategy / "metrics.jsonl") if "val_loss" in r]
    assert val[-1] == pytest.approx(single["val_loss"], abs=1e-5)
    # the gathered checkpoint loads without torch.distributed and matches the single-process weights
    a, b = ck.load_model(tmp_path / "single"), ck.load_model(tmp_path / strategy)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert (x - y).abs().max() < 1e-4, name
