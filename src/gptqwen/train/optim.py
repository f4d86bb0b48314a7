"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedules.

    opt = build_optimizer(model, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    for group in opt.param_groups: group["lr"] = lr_at(step, lr=3e-4, max_steps=1000, warmup_steps=50)

Weight decay pulls weights toward zero; on norms' gains, biases and embeddings that only hurts (a gain
of 0 switches a channel off, embedding rows of rare tokens would decay between their updates), so
those get none — GPT-2/nanoGPT and Qwen practice. Schedules:
  * ``cosine``: linear warmup, then cosine from `lr` down to `min_lr`;
  * ``wsd`` (warmup-stable-decay, MiniCPM/DeepSeek): warmup, constant `lr`, then a linear decay to
    `min_lr` over the last `decay_fraction` of the steps — a run can be extended before the decay starts;
  * ``linear`` (GPT-1): warmup, then a linear decay to `min_lr` over all remaining steps (WSD decaying throughout);
  * ``constant``: warmup, then `lr`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

SCHEDULES = ("cosine", "wsd", "linear", "constant")


def _no_decay(name: str, param: torch.Tensor) -> bool:
    lowered = name.lower()
    return param.ndim < 2 or "norm" in lowered or "emb" in lowered or "wte" in lowered or "wpe" in lowered


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices with `weight_decay`, and norms/biases/embeddings with none."""
    decay, keep, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (keep if _no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: Iterable[float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay) over `param_groups`; the fused kernel for plain CPU/CUDA tensors."""
    if fused is None:
        from torch.distributed.tensor import DTensor

        params = list(model.parameters())
        fused = all(p.device.type in ("cpu", "cuda") and not isinstance(p, DTensor) for p in params)
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


def lr_at(
    step: int,
    lr: float,
    max_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "linear":
        schedule, decay_fraction = "wsd", 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * max_steps))
        decay_start = max(warmup_steps, max_steps - decay_steps)
        if step < decay_start:
            return lr
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return lr + (min_lr - lr) * progress
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
