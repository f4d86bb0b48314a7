"""Training logs: TensorBoard event files mirror metrics.jsonl, also across an interrupted and resumed run."""

from __future__ import annotations

import shutil

import pytest

from gptqwen.train.metrics import MetricsLog
from gptqwen.train.trainer import pretrain
from test_train import losses, tiny_data, tiny_recipe  # noqa: F401  (tiny_data is a fixture)


def test_tensorboard_events_match_jsonl(tmp_path, tiny_data):  # noqa: F811
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tiny_recipe(tiny_data, max_steps=4, ckpt_interval=2, eval_interval=2, log_interval=1, tensorboard=True)
    run = tmp_path / "run"
    pretrain(recipe, run, quiet=True, stop_at=3)  # logs steps 1-3, checkpoints at 2 and 3 ...
    shutil.rmtree(run / "ckpt_0000003")  # ... the last one is lost: the resumed run redoes step 3
    pretrain(recipe, run, resume=True, quiet=True)

    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "val_bpb"} <= set(acc.Tags()["scalars"])
    loss_events = acc.Scalars("loss")
    assert [e.step for e in loss_events] == [1, 2, 3, 4]  # step 3 of the cut-short run was purged on resume
    assert [e.value for e in loss_events] == pytest.approx(losses(run), rel=1e-6)  # float32 in the event file
    records = MetricsLog.read(run / "metrics.jsonl")
    for tag in ("lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "val_bpb"):  # every scalar, not just its name
        want = [(r["step"], pytest.approx(r[tag], rel=1e-6)) for r in records if tag in r]
        assert want and [(e.step, e.value) for e in acc.Scalars(tag)] == want, tag


def test_tensorboard_off_writes_no_events(tmp_path, tiny_data):  # noqa: F811
    pretrain(tiny_recipe(tiny_data, max_steps=1, tensorboard=False), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "tb").exists() and len(losses(tmp_path / "run")) == 1
