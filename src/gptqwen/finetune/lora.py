"""LoRA for training: choose the projections to adapt and wrap them in adapters.

`apply_lora(model, targets=["q", "v"], r=8, alpha=16)` freezes the model and wraps the chosen
linear layers in `LoRALinear` (gptqwen.model.lora), which adds `(alpha / r) * B @ A @ x` to the
frozen projection (B starts at zero, so training starts exactly from the base model). gptqwen
computes q, k and v with one fused matmul, so `q`, `k`, `v` are separate adapters on row slices of
that matrix — the same function as LoRA on separate q/k/v projections (PEFT on a transformers model).
The same holds for `gate`/`up` of the fused SwiGLU matrix. At the end of a run the adapter is saved
in PEFT's format (gptqwen.peft_format) and merged into the weights (`merge_lora`).

Targets: q, k, v, o (attention), gate, up, down (MLP; GELU models have up/down), or a layer's own
attribute name (e.g. `qkv`, `router`). Routed MoE experts are batched 3-D weights, not linear
layers; the shared expert's MLP is adapted like any MLP.

Used by `gptqwen sft --lora-r 8 --lora-alpha 16 --lora-targets q,k,v,o`.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from gptqwen.errors import UserError
from gptqwen.model.lora import LoRALinear, Slice

SHORT_NAMES = ("q", "k", "v", "o", "gate", "up", "down")


def _sites(module: nn.Module, short: str) -> list[tuple[str, Slice | None]]:
    """(child attribute, output-row slice) that a short target name means inside `module`."""
    if hasattr(module, "qkv") and hasattr(module, "n_kv_head"):  # gptqwen attention: fused q|k|v rows
        q, kv = module.n_head * module.head_dim, module.n_kv_head * module.head_dim
        return {"q": [("qkv", (0, q))], "k": [("qkv", (q, q + kv))], "v": [("qkv", (q + kv, q + 2 * kv))],
                "o": [("proj", None)]}.get(short, [])
    if getattr(module, "kind", None) == "gelu" and hasattr(module, "fc"):
        return {"up": [("fc", None)], "down": [("proj", None)]}.get(short, [])
    if hasattr(module, "gate_up"):  # fused SwiGLU: gate rows first, then up rows
        width = module.gate_up.out_features // 2
        return {"gate": [("gate_up", (0, width))], "up": [("gate_up", (width, 2 * width))],
                "down": [("down", None)]}.get(short, [])
    return []


def apply_lora(model: nn.Module, targets: Iterable[str], r: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> list[str]:
    """Freeze `model` and wrap the projections named by `targets`; returns the wrapped layer names."""
    targets = [t.strip() for t in targets if t.strip()]
    if r <= 0:
        raise UserError(f"--lora-r must be a positive integer, got {r}")
    if not targets:
        raise UserError(f"--lora-targets is empty; name some of {', '.join(SHORT_NAMES)}")
    plan: dict[tuple[str, str], list[Slice | None]] = {}  # (parent path, attribute) -> slices
    modules = dict(model.named_modules())
    for path, module in modules.items():
        for t in targets:
            sites = _sites(module, t) if t in SHORT_NAMES else [
                (name, None) for name, child in module.named_children() if name == t and isinstance(child, nn.Linear)]
            for attr, sl in sites:
                plan.setdefault((path, attr), []).append(sl)
    if not plan:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, nn.Linear)})
        raise UserError(f"--lora-targets {','.join(targets)} matched no linear layer; use "
                        f"{', '.join(SHORT_NAMES)} or a layer name of this model: {', '.join(linear)}")
    model.requires_grad_(False)
    for (path, attr), slices in plan.items():
        parent = modules[path]
        base = getattr(parent, attr)
        whole = any(s is None for s in slices)
        setattr(parent, attr, LoRALinear(base, r, alpha, dropout, None if whole else sorted(set(slices))))
    return [f"{p}.{a}" if p else a for p, a in plan]
