"""The fine-tuning loop shared by `gptqwen finetune` and `gptqwen sft`.

A plain loop over batches that a caller-supplied `loss_fn` turns into a loss: the pretraining
trainer's AdamW (`gptqwen.train.optim.build_optimizer`: no decay on norms, biases, embeddings) and
schedules (`lr_at`), gradient clipping, bf16 autocast on GPUs, and a metrics record every `log_every` steps (printed to
stderr and returned; the commands write it as `metrics.jsonl`). GPT-1's schedule is a linear
decay after warmup (`schedule="linear"`, the trainer's WSD schedule with the whole run decaying).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from gptqwen.train.optim import build_optimizer, lr_at


@dataclass
class LoopConfig:
    lr: float = 6.25e-5
    min_lr: float = 0.0
    warmup: float = 0.002       # fraction of the steps (GPT-1: 0.2%) or, if >= 1, a step count
    schedule: str = "linear"    # "linear" (GPT-1), "cosine", "constant"
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    log_every: int = 10
    bf16: bool | None = None    # autocast the forward to bf16; None = on CUDA devices that support it


def lr_for(step: int, total: int, cfg: LoopConfig) -> float:
    warm = int(cfg.warmup) if cfg.warmup >= 1 else math.ceil(cfg.warmup * total)
    if cfg.schedule == "linear":
        return lr_at(step, cfg.lr, total, warm, cfg.min_lr, "wsd", decay_fraction=1.0)
    return lr_at(step, cfg.lr, total, warm, cfg.min_lr, cfg.schedule)


def run(
    modules: nn.Module,
    batches: Iterable,
    total_steps: int,
    loss_fn: Callable[[object], dict[str, torch.Tensor]],
    cfg: LoopConfig,
    quiet: bool = False,
) -> list[dict]:
    """Train the trainable parameters of `modules` for `total_steps` batches; `loss_fn(batch)`
    returns a dict of scalar tensors with at least 'loss'."""
    opt = build_optimizer(modules, cfg.lr, cfg.weight_decay, cfg.betas)
    trainable = [p for p in modules.parameters() if p.requires_grad]
    device = trainable[0].device
    bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    history, t0, it = [], time.time(), iter(batches)
    for step in range(total_steps):
        lr = lr_for(step, total_steps, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast():  # weights and optimizer state stay fp32; the loss is computed in fp32 by the model
            losses = loss_fn(next(it))
        losses["loss"].backward()
        norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip) if cfg.grad_clip > 0 else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % cfg.log_every == 0 or step == total_steps - 1:
            rec = {"step": step + 1, "lr": lr, **{k: float(v.detach()) for k, v in losses.items()}}
            if norm is not None:
                rec["grad_norm"] = float(norm)
            rec["elapsed_s"] = round(time.time() - t0, 2)
            history.append(rec)
            if not quiet:
                shown = " ".join(f"{k} {v:.4g}" for k, v in rec.items() if k not in ("step", "elapsed_s"))
                print(f"step {step + 1}/{total_steps} {shown} ({rec['elapsed_s']:.0f}s)", file=sys.stderr)
    return history


def cycle(make_epoch: Callable[[int], list]) -> Iterable:
    """Batches epoch after epoch; `make_epoch(epoch)` reshuffles with the epoch as seed."""
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1
