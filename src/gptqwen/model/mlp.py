"""Dense feed-forward blocks: GELU (tanh approximation, GPT) and SwiGLU (Qwen) with a fused gate|up matmul."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """GELU: proj(gelu(fc(x))). SwiGLU: down(silu(gate(x)) * up(x)), gate and up stored as one [2I, H] matrix."""

    def __init__(self, kind: str, dim: int, width: int, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        if kind == "gelu":
            self.fc = nn.Linear(dim, width, bias=bias)
            self.proj = nn.Linear(width, dim, bias=bias)
        else:
            self.gate_up = nn.Linear(dim, 2 * width, bias=bias)
            self.down = nn.Linear(width, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gelu":
            return self.proj(F.gelu(self.fc(x), approximate="tanh"))
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)
