"""Global-batch MoE load balancing (train.moe_balance=global, Qwen3): two gloo ranks x two micro-batches give the
loss and gradients of one process with the whole batch in one micro-batch; the expert-load metrics and plot."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.model import Transformer
from gptqwen.model.moe import ExpertBalance, balancing
from gptqwen.train import distributed as D
from gptqwen.train.loop import Workload, optimizer_step
from gptqwen.train.metrics import MetricsLog, expert_load_metrics
from gptqwen.train.recipe import TrainConfig, load_recipe
from gptqwen.train.trainer import lm_loss, pretrain
from test_train import TINY_MODEL, tiny_data, tiny_recipe  # noqa: F401  (tiny_data is a fixture)

ROWS, T = 8, 16  # the global batch: 8 sequences of 16 tokens


def _model() -> Transformer:
    # a strong coefficient so that the balancing term's gradient is far above the comparison's tolerance
    cfg = Config.from_name("qwen3-moe-tiny", n_layer=2, n_embd=32, n_head=2, n_kv_head=1, head_dim=16, vocab_size=64,
                           n_experts=4, n_experts_per_tok=2, moe_intermediate_size=16, router_aux_loss_coef=1.0)  # fmt: skip
    torch.manual_seed(0)
    return Transformer(cfg)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    # one half repeats a few tokens (routed alike), the other is random: the halves' loads differ
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.randint(0, 4, (ROWS // 2, T + 1), generator=g), torch.randint(0, 64, (ROWS // 2, T + 1), generator=g)])
    return ids[:, :-1], ids[:, 1:]


class _KeepGrads:
    """An optimizer stand-in: `step` keeps the gradients the loop produced."""

    def __init__(self, model: torch.nn.Module):
        self.named = list(D.unwrap(model).named_parameters())
        self.grads: dict[str, torch.Tensor] = {}

    def step(self) -> None:
        self.grads = {n: p.grad.detach().clone() for n, p in self.named}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, p in self.named:
            p.grad = None


def _step(mode: str, n_micro: int, rank: int = 0, world: int = 1) -> tuple[dict[str, float], dict[str, torch.Tensor], torch.Tensor]:
    """One `optimizer_step` of this rank's share of the batch in `n_micro` micro-batches: (logged, grads, load)."""
    model = _model()
    info = D.DistInfo(rank, world)
    wrapped = D.wrap_model(model, info, "ddp")
    x, y = (t.chunk(world)[rank] for t in _batch())
    micro = list(zip(x.chunk(n_micro), y.chunk(n_micro)))
    work = Workload(model=model, model_config={}, steps=1, micro_batches=lambda *a: micro,
                    loss=lambda fwd, b: lm_loss(fwd, b, torch.device("cpu")), count_tokens=lambda b: b[0].numel())  # fmt: skip
    keep, balance = _KeepGrads(model), ExpertBalance(mode)
    sums, _, _ = optimizer_step(work, micro, wrapped, wrapped, keep, list(model.parameters()), TrainConfig(grad_clip=0),
                                info, contextlib.nullcontext, balance)  # fmt: skip
    return {k: float(D.all_reduce_mean(v, info)) for k, v in sums.items()}, keep.grads, balance.load()


def _rank(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        runs = {(mode, m): _step(mode, m, rank, 2) for mode, m in (("global", 2), ("global", 1), ("micro", 2))}
        if rank == 0:
            torch.save(runs, out)
    finally:
        dist.destroy_process_group()


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> bool:
    return all((a[n] - b[n]).abs().max() <= tol for n in a)


@pytest.mark.slow  # two spawned processes: ~10 s on 2 busy cores
def test_two_ranks_two_micro_batches_equal_one_process(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path / "runs.pt")), nprocs=2, join=True)
    runs = torch.load(tmp_path / "runs.pt", weights_only=True)
    want, want_grads, want_load = _step("global", 1)  # one process, the whole batch in one micro-batch
    for key in (("global", 2), ("global", 1)):  # with the counting pass, and with the counts all-reduced in the forward
        got, grads, load = runs[key]
        assert got == pytest.approx(want, abs=1e-5), key
        assert _close(grads, want_grads, 1e-5), key
        assert torch.equal(load, want_load)
    # per-micro-batch balancing of the same split is another loss: the comparison above can tell them apart
    micro, micro_grads, micro_load = runs[("micro", 2)]
    assert abs(micro["aux_loss"] - want["aux_loss"]) > 1e-3
    assert not _close(micro_grads, want_grads, 1e-4)
    assert torch.equal(micro_load, want_load)  # the logged load covers the global batch in both modes


def test_global_balance_in_one_process_and_micro_unchanged():
    """One process: two micro-batches with the counting pass = one micro-batch; `micro` is the model's own loss."""
    want, want_grads, load = _step("global", 1)
    got, grads, _ = _step("global", 2)
    assert got == pytest.approx(want, abs=1e-6) and _close(grads, want_grads, 1e-6)
    assert load.shape == (2, 4) and torch.all(load.sum(-1) == ROWS * T * 2)  # every row chose 2 experts in each layer
    model, (x, y) = _model(), _batch()
    plain = model(x[:4], targets=y[:4]).aux_loss
    balance = ExpertBalance("micro")
    with balancing(balance):
        assert torch.equal(model(x[:4], targets=y[:4]).aux_loss, plain)
    assert balance.load().sum() == 4 * T * 2 * 2  # rows x top-k x layers
    with pytest.raises(RuntimeError, match="counting"):  # several micro-batches without the counting pass
        balance = ExpertBalance("global")
        balance.start(2)
        with balancing(balance):
            model(x[:4], targets=y[:4])


def test_expert_load_metrics():
    m = expert_load_metrics(torch.tensor([[5.0, 5, 5, 5], [20, 0, 0, 0]]))
    assert m["expert_entropy/0"] == 1 and m["expert_max_mean/0"] == 1
    assert m["expert_entropy/1"] == 0 and m["expert_max_mean/1"] == 4
    assert expert_load_metrics(None) == {}
    with pytest.raises(UserError, match="moe_balance"):
        load_recipe("qwen3-moe-shakespeare", ["train.moe_balance=local"])
    assert load_recipe("qwen3-moe-shakespeare").train.moe_balance == "global"


def test_moe_run_logs_and_plots_expert_load(tmp_path, tiny_data):  # noqa: F811
    moe = {**TINY_MODEL, "preset": "qwen3-moe-tiny", "n_experts": 4, "n_experts_per_tok": 2, "moe_intermediate_size": 32}
    recipe = tiny_recipe(tiny_data, moe, max_steps=2, micro_batch=2, moe_balance="global", eval_interval=0, ckpt_interval=0)
    pretrain(recipe, tmp_path / "run", quiet=True)
    records = [r for r in MetricsLog.read(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(records) == 2
    for r in records:
        for i in range(2):
            assert 0 < r[f"expert_entropy/{i}"] <= 1 and 1 <= r[f"expert_max_mean/{i}"] <= 2
        assert math.isfinite(r["aux_loss"])
    assert (tmp_path / "run" / "expert_load.png").stat().st_size > 1000
