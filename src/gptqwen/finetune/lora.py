"""LoRA: low-rank adapters on chosen projections, and merging them back for export.

`apply_lora(model, targets=["q", "v"], r=8, alpha=16)` freezes the model and wraps the chosen
linear layers in `LoRALinear`, which adds `(alpha / r) * B @ A @ x` to the frozen projection
(A: Kaiming-uniform, B: zeros, so training starts exactly from the base model). gptqwen computes
q, k and v with one fused matmul, so `q`, `k`, `v` are separate adapters on row slices of that
matrix — the same function as LoRA on separate q/k/v projections (PEFT on a transformers model).
The same holds for `gate`/`up` of the fused SwiGLU matrix. `merge_lora(model)` folds the updates
into plain `nn.Linear` layers, so the exported checkpoint is an ordinary model.

Targets: q, k, v, o (attention), gate, up, down (MLP; GELU models have up/down), or a layer's own
attribute name (e.g. `qkv`, `router`). Routed MoE experts are batched 3-D weights, not linear
layers; the shared expert's MLP is adapted like any MLP.

Used by `gptqwen sft --lora-r 8 --lora-alpha 16 --lora-targets q,k,v,o`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from gptqwen.errors import UserError

SHORT_NAMES = ("q", "k", "v", "o", "gate", "up", "down")
Slice = tuple[int, int]


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus trainable low-rank updates, each on a slice of the output rows."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 slices: list[Slice] | None = None):
        super().__init__()
        self.base = base
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        self.slices = sorted(slices or [(0, base.out_features)])
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        for start, end in self.slices:
            a = nn.Parameter(torch.empty(r, base.in_features, **factory))
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's default init, as in PEFT
            self.lora_A.append(a)
            self.lora_B.append(nn.Parameter(torch.zeros(end - start, r, **factory)))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        base.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:  # code that reads `.weight` (dtype checks) still works
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        xd = self.dropout(x)
        pieces, at = [], 0
        for (start, end), a, b in zip(self.slices, self.lora_A, self.lora_B):
            if start > at:
                pieces.append(xd.new_zeros(*xd.shape[:-1], start - at))
            pieces.append((xd @ a.T @ b.T) * self.scale)
            at = end
        if at < y.shape[-1]:
            pieces.append(xd.new_zeros(*xd.shape[:-1], y.shape[-1] - at))
        return y + (pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1))

    def delta_weight(self) -> torch.Tensor:
        """The dense update `W' - W` in fp32."""
        delta = torch.zeros(self.base.out_features, self.base.in_features, device=self.base.weight.device)
        for (start, end), a, b in zip(self.slices, self.lora_A, self.lora_B):
            delta[start:end] += (b.float() @ a.float()) * self.scale
        return delta

    def merged(self) -> nn.Linear:
        """A plain linear layer computing the same function (without dropout)."""
        base = self.base
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                        device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_((base.weight.float() + self.delta_weight()).to(out.weight.dtype))
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, slices={self.slices}"


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


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear by its merged nn.Linear (in place); returns how many were merged."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
                count += 1
    model.requires_grad_(True)
    return count


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights, for saving an adapter on its own."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".lora_" in k}
