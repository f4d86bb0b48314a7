"""Dense feed-forward blocks: GELU (tanh approximation, GPT) and SwiGLU (Qwen) with a fused gate|up matmul.

Both activations have hand-written backwards for training on CPU, where elementwise passes over the wide
hidden tensor cost as much as a matmul. On fp32 CPU each direction is one C pass (`gptqwen/csrc/norms.c`, which
recomputes the sigmoid in the backward rather than keeping it); elsewhere torch ops:
  * GELU-tanh is computed as x * sigmoid(2u) (= 0.5 x (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3)):
    the same function to fp32 rounding, but sigmoid is several times cheaper than tanh in torch's CPU kernels.
  * SwiGLU writes the gate and up gradients straight into one buffer shaped like the fused projection's
    output, so backward has no concatenation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptqwen import kernels

_GELU_C = 2 * math.sqrt(2 / math.pi)  # sigmoid(2u) = 0.5 (1 + tanh u)
_GELU_K = 0.044715


def _gelu_gate(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(2u): GELU-tanh(x) = x * _gelu_gate(x)."""
    return x.square().mul_(_GELU_C * _GELU_K).add_(_GELU_C).mul_(x).sigmoid_()


class _GeluTanhFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = kernels.gelu(x) if kernels.usable(x) else None
        ctx.fast = y is not None
        if y is not None:  # the C pass recomputes the sigmoid in the backward: only x is kept
            ctx.save_for_backward(x)
            return y
        s = _gelu_gate(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if ctx.fast:
            return kernels.gelu_backward(ctx.saved_tensors[0], grad.contiguous())
        x, s = ctx.saved_tensors
        # d/dx x*s(z) = s + x * s(1-s) * z',  z' = C (1 + 3K x^2)
        xdz = x.square().mul_(3 * _GELU_C * _GELU_K).add_(_GELU_C).mul_(x)
        return torch.addcmul(s, xdz, torch.addcmul(s, s, s, value=-1)).mul_(grad)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU (tanh approximation)."""
    big = x.dtype == torch.float32 and x.numel() >= 32768  # tiny tensors in torch ops: one native kernel beats six
    if torch.is_grad_enabled() and x.requires_grad:
        return _GeluTanhFn.apply(x) if big or kernels.usable(x) else F.gelu(x, approximate="tanh")
    y = kernels.gelu(x) if kernels.usable(x) else None
    if y is not None:
        return y
    return x * _gelu_gate(x) if big else F.gelu(x, approximate="tanh")


class _SwiGLUFn(torch.autograd.Function):
    """silu(gate) * up from the fused [..., gate | up] projection output. On fp32 CPU forward and backward are
    one C pass each (`kernels.swiglu`, recomputing the sigmoid in the backward instead of saving it)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        out = kernels.swiglu(h) if kernels.usable(h) else None
        ctx.fast = out is not None
        if out is not None:
            ctx.save_for_backward(h)
            return out
        gate, up = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(h, act)
        return act * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if ctx.fast:
            return kernels.swiglu_backward(ctx.saved_tensors[0], grad.contiguous())
        h, act = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        if torch.compiler.is_compiling():  # out= into strided views breaks the graph; the compiler fuses this anyway
            return torch.cat((torch.ops.aten.silu_backward(grad * up, gate), grad * act), dim=-1)
        grad_h = torch.empty_like(h)
        grad_gate, grad_up = grad_h.chunk(2, dim=-1)
        torch.mul(grad, act, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_h


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up where h = [..., gate | up]."""
    if torch.is_grad_enabled() and h.requires_grad:
        return _SwiGLUFn.apply(h)
    if kernels.usable(h):
        out = kernels.swiglu(h)
        if out is not None:
            return out
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


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
            return self.proj(gelu_tanh(self.fc(x)))
        return self.down(swiglu(self.gate_up(x)))
