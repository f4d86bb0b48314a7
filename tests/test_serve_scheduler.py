"""Continuous batching (`infer/scheduler.py`): requests that join and leave the running batch at different steps
produce exactly what `Engine.generate` gives each alone (C decode step and PyTorch forward, chunked prefill,
relayouts included); cancellation frees the slot; the queue is bounded."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from gptqwen.config import Config
from gptqwen.infer import Engine, SamplingParams
from gptqwen.infer.scheduler import QueueFull, Scheduler
from gptqwen.model import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(Config.from_name("qwen3-tiny")).eval()


def _collect(sched: Scheduler, row) -> list[int]:
    return [t for u in sched.stream(row) for t in u.token_ids]


@pytest.mark.parametrize("native", [True, False])
def test_staggered_requests_equal_generate(model, native):
    engine = Engine(model, None, native=native)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 400, (n,), generator=g).tolist() for n in (5, 17, 3, 30, 9, 12, 40, 2)]
    params = [SamplingParams(temperature=0 if i % 2 else 0.9, seed=i, top_k=20 * (i % 3), max_new_tokens=n,
                             ignore_eos=True, repetition_penalty=1.3 if i == 3 else 1.0)
              for i, n in enumerate((20, 7, 33, 15, 40, 3, 25, 60))]
    expected = [engine.generate([p], q)[0].token_ids for p, q in zip(prompts, params)]
    # 4 slots for 8 requests arriving over time; 16-token prefill chunks split the long prompts
    sched = Scheduler(engine, max_seqs=4, prefill_tokens=16)
    got: dict[int, list[int]] = {}

    def client(i: int) -> None:
        time.sleep(0.004 * i)
        [row] = engine.make_rows([prompts[i]], params[i])
        got[i] = _collect(sched, row)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    _wait_idle(sched)
    assert sched.stats().tokens == sum(len(e) for e in expected)
    sched.close()
    assert [got[i] for i in range(len(prompts))] == expected


def _wait_idle(sched: Scheduler) -> None:
    """Until no request runs or waits (a row's last update reaches its client just before it leaves the batch)."""
    deadline = time.time() + 5
    while sched.stats().running or sched.stats().waiting:
        assert time.time() < deadline, sched.stats()
        time.sleep(0.005)


def test_cancel_frees_the_slot_and_queue_is_bounded(model):
    engine = Engine(model, None)
    sched = Scheduler(engine, max_seqs=1, max_queue=1)
    long = SamplingParams(temperature=0, max_new_tokens=200, ignore_eos=True)
    [row] = engine.make_rows([[1, 2, 3]], long)
    updates = sched.stream(row)
    next(updates)  # running
    with sched._lock:  # the scheduler cannot admit while we hold its lock: fill the queue deterministically
        [waiting] = engine.make_rows([[4, 5]], long)
        handle = sched.submit(waiting, lambda u: None)
        with pytest.raises(QueueFull):
            sched.submit(engine.make_rows([[6]], long)[0], lambda u: None)
    handle.cancel()
    updates.close()  # the client goes away: its row is cancelled
    _wait_idle(sched)
    assert row.finish_reason == "cancelled" and len(row.tokens) < 200
    [again] = engine.make_rows([[7, 8]], SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True))
    assert len(_collect(sched, again)) == 5  # the slot is free again
    sched.close()
