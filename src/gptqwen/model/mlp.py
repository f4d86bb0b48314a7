"""Dense feed-forward blocks: GELU (tanh approximation, GPT) and SwiGLU (Qwen), gate and up one fused matmul."""

from __future__ import annotations

import torch
from torch import nn

from gptqwen import ops


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
            return self.proj(ops.gelu(self.fc(x)))
        return self.down(ops.swiglu(self.gate_up(x)))
