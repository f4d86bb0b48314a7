"""The LoRA layer: a frozen linear projection plus low-rank updates on slices of its output rows.

`LoRALinear(base, r, alpha, slices=[(0, 128)])` adds `scale * B_i @ A_i @ x` to rows `slices[i]` of `base(x)`
(scale = alpha / r; A: Kaiming-uniform, B: zeros, so a fresh layer computes exactly the base projection).
gptqwen computes q|k|v and gate|up with one fused matrix each, so one LoRALinear carries separate adapters
for q, k and v — each slice has its own A and B, the same function as PEFT's adapters on separate
`q_proj`/`k_proj`/`v_proj` layers. `merge_lora(model)` folds every update back into a plain `nn.Linear`.

Which layers get adapters is chosen by `gptqwen.finetune.lora.apply_lora` (training) or read from a PEFT
adapter folder by `gptqwen.peft_format` (loading); this module is the layer both of them build.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

Slice = tuple[int, int]


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus trainable low-rank updates, each on a slice of the output rows.

    `scale` multiplies every update (GRPO sets it to 0 to get the reference model back)."""

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

    @classmethod
    def from_factors(cls, base: nn.Linear, pieces: Sequence[tuple[Slice, torch.Tensor, torch.Tensor, float]]) -> LoRALinear:
        """A layer with given updates: `(slice, A [r, in], B [rows, r], scale)` per slice (read from a file).

        One layer has one `scale`; a slice whose own scale differs has it folded into its B."""
        pieces = sorted(pieces, key=lambda p: p[0])
        scale = pieces[0][3]
        r = pieces[0][1].shape[0]
        layer = cls(base, r=r, alpha=scale * r, slices=[p[0] for p in pieces])
        layer.scale = scale  # exactly the file's, not alpha / r recomputed
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        with torch.no_grad():
            for i, (_, a, b, s) in enumerate(pieces):
                layer.lora_A[i] = nn.Parameter(a.to(**factory))
                layer.lora_B[i] = nn.Parameter((b if s == scale else b.float() * (s / scale)).to(**factory))
        return layer

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
        ranks = [a.shape[0] for a in self.lora_A]
        return f"r={ranks[0] if len(set(ranks)) == 1 else ranks}, scale={self.scale:g}, slices={self.slices}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear of `model` by its module path (e.g. `blocks.0.attn.qkv`)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


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
