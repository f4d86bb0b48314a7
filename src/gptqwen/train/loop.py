"""The training core every trainer runs on (pretrain, sft, finetune, and the trainers to come).

A trainer describes its work as a `Workload` — the module to train, a pure function from a step to that
step's micro-batches, and a loss — and `train(workload, recipe.train, run_dir, ...)` does the rest the
same way for all of them:

- AdamW over the trainable parameters (no decay on norms, biases, embeddings) and the warmup + cosine /
  WSD / linear schedule (`train.optim`), gradient accumulation, clipping, bf16 autocast on GPUs;
- activation checkpointing of the decoder blocks and DDP / FSDP2 under torchrun, applied from outside
  the model (`train.distributed`);
- a rich progress bar (`train.progress`), metrics.jsonl every step, TensorBoard when installed, the loss
  plot (loss.png) at each checkpoint;
- MoE models: the load-balancing loss over each micro-batch or over the global batch (`train.moe_balance`,
  see model/moe.py), each MoE layer's expert load logged every step and plotted (expert_load.png);
- atomic checkpoints (`train.checkpoint`) holding everything that decides the next step (weights,
  optimizer moments, step, RNG), so `resume=True` continues bit-identically; the data position is the
  step itself, because `Workload.micro_batches(step, ...)` depends on nothing else.

The run folder: config.yaml (the resolved recipe), metrics.jsonl, loss.png, expert_load.png (MoE), tb/, ckpt_<step>/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptqwen.errors import UserError
from gptqwen.model.moe import ExpertBalance, MoE, balancing
from gptqwen.train import checkpoint as ckpt_io
from gptqwen.train import distributed as D
from gptqwen.train.metrics import MetricsLog, expert_load_metrics, mfu_text, peak_flops, plot_expert_load, plot_losses
from gptqwen.train.optim import build_optimizer, lr_at, set_lr
from gptqwen.train.progress import Console
from gptqwen.train.recipe import Recipe, TrainConfig

# (forward module, micro-batch) -> (objective to backpropagate, scalars to log: at least "loss")
LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Workload:
    """What a trainer plugs into the core."""

    model: nn.Module  # plain (unwrapped) module on its device; parameters with requires_grad train
    model_config: dict[str, Any]  # saved in checkpoints; a resume must match it
    steps: int  # optimizer steps of the whole run
    micro_batches: Callable[[int, D.DistInfo], list[Any]]  # step -> this rank's micro-batches of that step
    loss: LossFn
    count_tokens: Callable[[Any], int]  # tokens in a micro-batch, for tokens/s
    order: dict[str, Any] = field(default_factory=dict)  # other settings a resume must match (the data order's)
    flops_per_token: float | None = None  # for MFU
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None  # (forward module) -> metrics, in eval mode
    sample: Callable[[nn.Module, int], str] | None = None  # (model, step) -> a generation to show
    epoch_of: Callable[[int], float] | None = None  # steps done -> epochs done
    describe: str = ""  # the first console line


class EpochBatches:
    """`Workload.micro_batches` for data served in epochs: epoch e is `make_epoch(e)` (shuffled by its own
    seed), so the batch of any step is known without replaying the run — a resume reads the same batches."""

    def __init__(self, make_epoch: Callable[[int], list[Any]]):
        self.make_epoch = make_epoch
        self.epoch, self.batches = 0, make_epoch(0)
        self.per_epoch = len(self.batches)
        if not self.per_epoch:
            raise UserError("the training data makes no batch; add rows")

    def __call__(self, step: int, info: D.DistInfo) -> list[Any]:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self.epoch:
            self.epoch, self.batches = epoch, self.make_epoch(epoch)
        return [self.batches[i]]

    def epoch_of(self, done: int) -> float:
        return done / self.per_epoch


def setup_process(tc: TrainConfig, single: str | None = None) -> D.DistInfo:
    """This process's device and process group (under torchrun) and CPU threads, from train.device / threads.

    `single` names a trainer that runs in one process only: it refuses torchrun with a clear message."""
    info = D.setup(tc.device)
    if single and info.world_size > 1:
        D.cleanup(info)
        raise UserError(f"gptqwen {single} runs in a single process; start it without torchrun")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    return info


# what a run writes at the top of its folder (beside ckpt_<step>/): never over files it did not write
RUN_FILES = frozenset({"config.yaml", "metrics.jsonl", "config.json", "model.safetensors", "generation_config.json",
                       "tokenizer.json", "tokenizer_config.json"})


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> list[Path]:
    """The run folder's checkpoints, after refusing to clobber or to resume nothing (call before any work)."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; choose one")
    existing = ckpt_io.list_checkpoints(out)
    if existing and not (resume or overwrite):
        raise UserError(f"'{out}' already holds checkpoints; pass --resume to continue that run, "
                        "--overwrite to start over, or --out NEW_DIR")
    if resume and not existing:
        raise UserError(f"nothing to resume in '{out}' (no ckpt_<step> folder)")
    if not (existing or resume or overwrite) and out.is_dir():
        clash = sorted(p.name for p in out.iterdir() if p.name in RUN_FILES)
        if clash:  # e.g. --out pointing at a model folder: the export would replace the user's files
            raise UserError(f"'{out}' already holds {', '.join(clash)} and no checkpoints of a run; a run there "
                            "would replace them. Choose a new --out, or pass --overwrite to replace them")
    return existing


def autocast_for(train_dtype: str, device: torch.device) -> tuple[Callable[[], Any], str]:
    """A context factory for the forward pass, and the precision's name (weights stay fp32 either way)."""
    bf16 = train_dtype == "bf16" or (train_dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if not bf16:
        return contextlib.nullcontext, "fp32"
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), "bf16"


def steps_for(tc: TrainConfig, batches_per_epoch: float) -> int:
    """The run's optimizer steps: train.max_steps, or train.epochs over the data."""
    if tc.max_steps is not None:
        return tc.max_steps
    if tc.epochs is None:
        raise UserError("set train.max_steps or train.epochs (e.g. --max-steps 500 or --epochs 2)")
    return max(1, round(tc.epochs * batches_per_epoch))


def warmup_steps(tc: TrainConfig, steps: int) -> int:
    return tc.warmup_steps or math.ceil(tc.warmup_ratio * steps)


def _check_resume(state: dict[str, Any], work: Workload, ckpt: Path) -> None:
    saved = state.get("model_config", {})
    # the name is a label (it changed format once: overrides joined the preset's name), not the architecture
    diff = {k: (saved.get(k), v) for k, v in work.model_config.items() if saved.get(k) != v and k != "name"}
    if diff:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:4])
        raise UserError(f"cannot resume {ckpt}: the model config differs from the checkpoint's ({shown}); "
                        "use the original settings or start a new run with --out")  # fmt: skip
    for key, now in work.order.items():
        was = state.get("order", {}).get(key, now)
        if was != now:
            raise UserError(f"cannot resume {ckpt}: {key} was {was}, now {now}; the run (its data order, its "
                            "trained layers) depends on it. Use the original value or start a new run with --out")  # fmt: skip


def _prepare_run_dir(out: Path, existing: list[Path], overwrite: bool, recipe: Recipe) -> None:
    if overwrite and existing:
        for p in existing:
            shutil.rmtree(p)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(out / "tb", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".ckpt_*.tmp"):  # a checkpoint whose writer was killed mid-way
        shutil.rmtree(stale, ignore_errors=True)
    ckpt_io.write_config(out, recipe.to_dict())


def _decoder(model: nn.Module) -> nn.Module | None:
    """The module holding the decoder blocks (the model itself, or inside a wrapper such as a task model)."""
    return next((m for m in model.modules() if isinstance(getattr(m, "blocks", None), nn.ModuleList)), None)


def train(work: Workload, tc: TrainConfig, out: str | Path, recipe: Recipe, info: D.DistInfo, resume: bool = False,
          overwrite: bool = False, quiet: bool = False, stop_at: int | None = None, label: str = "train") -> dict[str, Any]:  # fmt: skip
    """Run `work` into the run folder `out`; returns the summary (last metrics, tokens/s, checkpoint).

    `stop_at` ends the run early at that step with a checkpoint (time-sliced jobs); `resume=True` later
    finishes it exactly as if it had never stopped."""
    out, stop_at = Path(out), min(stop_at or work.steps, work.steps)
    existing = check_run_dir(out, resume, overwrite)
    state: dict[str, Any] = {}
    if resume:
        state = ckpt_io.read_state(existing[-1])
        _check_resume(state, work, existing[-1])
    model = work.model
    balance = ExpertBalance(tc.moe_balance) if any(isinstance(m, MoE) for m in model.modules()) else None
    if tc.activation_checkpointing:
        decoder = _decoder(model)
        if decoder is None:
            raise UserError("train.activation_checkpointing needs a model with decoder blocks")
        D.apply_activation_checkpointing(decoder)
    model = D.wrap_model(model, info, tc.dist)
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2))
    if resume:
        ckpt_io.restore_training_state(existing[-1], model, optimizer)
    step = int(state.get("step", 0))
    fwd = torch.compile(model) if tc.compile else model
    log = None
    if info.is_main:
        _prepare_run_dir(out, existing, overwrite, recipe)
        log = MetricsLog(out, tc.tensorboard, start_step=step)
    autocast, precision = autocast_for(tc.dtype, info.device)
    peak = None
    if work.flops_per_token:
        peak = tc.peak_flops or peak_flops(info.device, torch.bfloat16 if precision == "bf16" else torch.float32)
    warmup = warmup_steps(tc, work.steps)
    console = Console(info.is_main and not quiet, work.steps, step, label)
    origin = f"resuming at step {step}" if step else "from the start"
    if resume and state.get("world_size", info.world_size) != info.world_size:
        origin += f" (checkpoint written by {state['world_size']} processes; resharded)"
    console.print(f"{work.describe}{precision} on {info.device}, {work.steps} steps, {origin}")

    def in_eval_mode(fn: Callable[[], Any]) -> Any:
        model.eval()
        try:
            with autocast():
                return fn()
        finally:
            model.train()

    def save(at: int) -> Path:
        meta = {"model_config": work.model_config, "order": work.order, "train": dataclasses.asdict(tc)}
        return ckpt_io.save_training_checkpoint(out, at, model, optimizer, meta, tc.keep_last, tc.ckpt_format)

    summary: dict[str, Any] = {"run_dir": str(out), "start_step": step}
    if step >= stop_at and log is not None:  # a finished run resumed: report its last record
        summary.update(next((r for r in reversed(MetricsLog.read(log.path)) if "loss" in r), {}))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    last = {"time": time.perf_counter(), "step": step, "tokens": 0}
    with console:
        while step < stop_at:
            lr = lr_at(step, tc.lr, work.steps, warmup, tc.min_lr, tc.schedule, tc.decay_fraction)
            set_lr(optimizer, lr)
            sums, gnorm, tokens = optimizer_step(work, work.micro_batches(step, info), fwd, model, optimizer, trainable,
                                                 tc, info, autocast, balance)
            last["tokens"] += tokens
            step += 1
            record = {"step": step, **{k: D.all_reduce_mean(v, info).item() for k, v in sums.items()}, "lr": lr,
                      "grad_norm": float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)}  # fmt: skip
            if balance is not None:
                record.update(expert_load_metrics(balance.load()))
            if not math.isfinite(record["loss"]):
                raise UserError(f"the loss became {record['loss']} at step {step}; lower train.lr or raise train.warmup_steps")
            if work.epoch_of is not None:
                record["epoch"] = round(work.epoch_of(step), 4)
            if step % tc.log_interval == 0 or step == work.steps:
                now = time.perf_counter()
                tps = last["tokens"] * info.world_size / (now - last["time"])
                record["tokens_per_s"] = round(tps, 1)
                mfu = ""
                if peak:
                    record["mfu"] = round(tps * work.flops_per_token / (peak * info.world_size), 4)
                    mfu = f" | {mfu_text(record['mfu'])}"
                last.update(time=now, step=step, tokens=0)
                extra = "".join(f" | {k} {record[k]:.4f}" for k in sums if k != "loss")
                console.print(f"step {step:>6} | loss {record['loss']:.4f}{extra} | lr {lr:.2e} | grad {record['grad_norm']:.2f} | "
                              f"{tps:,.0f} tok/s{mfu}")  # fmt: skip
            if work.evaluate is not None and _due(step, tc.eval_interval, work.steps):
                found = in_eval_mode(lambda: work.evaluate(fwd))
                record.update(found)
                shown = ", ".join(f"{k} {v:.4g}" for k, v in found.items() if v is not None)
                console.print(f"[green]step {step}: {shown}[/]")
            if log is not None:
                log.write(record)
            console.advance(step, f"loss {record['loss']:.3f}")
            if work.sample is not None and tc.sample_tokens and _due(step, tc.sample_interval, work.steps):
                text = in_eval_mode(lambda at=step: work.sample(model, at))
                console.print(f"[dim]--- sample at step {step} ---[/]")
                console.print(text, markup=False, highlight=False)
                console.print("[dim]---[/]")
            if (tc.ckpt_interval and step % tc.ckpt_interval == 0) or step in (work.steps, stop_at):
                summary["checkpoint"] = str(save(step))
                if log is not None:
                    plot_losses(log.path, out / "loss.png", recipe.name)
                    if balance is not None:
                        plot_expert_load(log.path, out / "expert_load.png", f"{recipe.name}: expert load ({tc.moe_balance} balancing)")
            summary.update(record)
    if log is not None:
        log.close()
    summary["step"] = step
    return summary


def optimizer_step(work: Workload, micro: list[Any], fwd: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                   trainable: list[nn.Parameter], tc: TrainConfig, info: D.DistInfo,
                   autocast: Callable[[], Any],
                   balance: ExpertBalance | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """One optimizer step over the micro-batches `micro`: forward/backward each (gradient sync on the last only),
    clip, step, zero the gradients. Returns the mean of the logged values, the gradient norm and the tokens seen.
    `balance` (MoE models) computes their balancing loss and counts the expert load; None leaves the model's
    per-micro-batch loss. The loop above runs exactly this; bench/train_step.py times it."""
    sums: dict[str, torch.Tensor] = {}
    tokens = 0
    if balance is not None:
        balance.start(len(micro))
        if balance.needs_counting:  # global-batch frequencies must be known before the first backward
            with torch.no_grad(), autocast(), balance.counting():
                for batch in micro:
                    work.loss(fwd, batch)
    for m, batch in enumerate(micro):
        with _grad_sync(model, info, tc.dist, last_micro=m == len(micro) - 1), autocast(), balancing(balance):
            objective, logged = work.loss(fwd, batch)
        (objective / len(micro)).backward()
        for k, v in logged.items():
            sums[k] = sums.get(k, 0) + v.detach().float() / len(micro)
        tokens += work.count_tokens(batch)
    clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
    gnorm = torch.nn.utils.clip_grad_norm_([p for p in trainable if p.grad is not None], clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return sums, gnorm, tokens


def _due(step: int, interval: int, last: int) -> bool:
    """True at every `interval`-th step (0 = never) and at the last step."""
    return bool(interval and step % interval == 0) or step == last


def _grad_sync(model: nn.Module, info: D.DistInfo, strategy: str, last_micro: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if not info.enabled:
        return contextlib.nullcontext()
    if strategy == "fsdp":
        model.set_requires_gradient_sync(last_micro)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if last_micro else model.no_sync()
