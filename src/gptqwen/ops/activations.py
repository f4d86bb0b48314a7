"""The MLP activations: `gelu` (GPT's tanh approximation) and `swiglu` (silu(gate) * up on the fused
[..., gate | up] projection), each the C pass on fp32 CPU (`csrc/activations.c`) beside its PyTorch reference.

In a CPU training step the elementwise passes over the wide hidden tensor cost as much as a matmul; the C
passes are one sweep each way and recompute the sigmoid in the backward instead of saving it (so only the
input is kept). They are the ops `gptqwen::gelu` / `gptqwen::swiglu` (backwards `..._backward`), which
torch.compile keeps in its graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptqwen.ops import _clib
from gptqwen.ops._custom import CustomOp


def gelu_reference(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU (tanh approximation)."""
    return F.gelu(x, approximate="tanh")


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU (tanh approximation)."""
    return _gelu_op(x) if _clib.usable(x) else gelu_reference(x)


def swiglu_reference(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up where h = [..., gate | up]."""
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up where h = [..., gate | up]."""
    return _swiglu_op(h) if _clib.usable(h) else swiglu_reference(h)


# ---- GELU -----------------------------------------------------------------------------------------------
def _gelu_c(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    _clib.library().gq_gelu(x.data_ptr(), None, y.data_ptr(), x.numel(), _clib.threads())
    return y


def _gelu_backward_c(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    x, grad = x.contiguous(), grad.contiguous()
    dx = torch.empty_like(x)
    _clib.library().gq_gelu(x.data_ptr(), grad.data_ptr(), dx.data_ptr(), x.numel(), _clib.threads())
    return dx


_gelu_op = CustomOp("gptqwen::gelu", _gelu_c)
_gelu_backward_op = CustomOp("gptqwen::gelu_backward", _gelu_backward_c)


# ---- SwiGLU ---------------------------------------------------------------------------------------------
def _swiglu_c(h: torch.Tensor) -> torch.Tensor:
    h = h.contiguous()
    width = h.shape[-1] // 2
    out = torch.empty(*h.shape[:-1], width, dtype=torch.float32, device=h.device)
    _clib.library().gq_swiglu(h.data_ptr(), out.data_ptr(), h.numel() // (2 * width), width, _clib.threads())
    return out


def _swiglu_backward_c(h: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    h, grad = h.contiguous(), grad.contiguous()
    width = h.shape[-1] // 2
    grad_h = torch.empty_like(h)  # [grad gate | grad up]: shaped like the fused projection, no concatenation
    _clib.library().gq_swiglu_backward(h.data_ptr(), grad.data_ptr(), grad_h.data_ptr(),
                                       h.numel() // (2 * width), width, _clib.threads())
    return grad_h


_swiglu_op = CustomOp("gptqwen::swiglu", _swiglu_c)
_swiglu_backward_op = CustomOp("gptqwen::swiglu_backward", _swiglu_backward_c)


@_gelu_op.register_fake
@_gelu_backward_op.register_fake
@_swiglu_backward_op.register_fake
def _(x, grad=None):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_swiglu_op.register_fake
def _(h):
    return h.new_empty(*h.shape[:-1], h.shape[-1] // 2)


def _save_input(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])  # the backward recomputes the sigmoid from the input


_gelu_op.register_autograd(lambda ctx, grad: _gelu_backward_op(ctx.saved_tensors[0], grad),
                          setup_context=_save_input)
_swiglu_op.register_autograd(lambda ctx, grad: _swiglu_backward_op(ctx.saved_tensors[0], grad),
                            setup_context=_save_input)
