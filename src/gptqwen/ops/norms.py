"""RMSNorm over the last dim: `rms_norm` (the C pass on fp32 CPU, `csrc/norms.c`, forward and backward) beside
`rms_norm_reference` (PyTorch, numerically as transformers: normalised in fp32, cast back before the weight).

torch's CPU rms_norm runs as ~8 ops and autograd records about a dozen more for its backward, which dominates
small models on CPU; the C pass is one sweep each way. It is the op `gptqwen::rms_norm` (backward
`gptqwen::rms_norm_backward`; ops/_custom.py), so torch.compile keeps it in its graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptqwen.ops import _clib
from gptqwen.ops._custom import CustomOp


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dim of x; `weight` broadcasts against x (e.g. [D] or [heads, D])."""
    if x.dtype == torch.float32 and weight.dim() == 1:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return weight * (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dim of x; `weight` broadcasts against x (e.g. [D] or [heads, D])."""
    if weight.dim() == 1 and _clib.usable(x, weight):
        return _rms_norm_op(x, weight, eps)[0]
    return rms_norm_reference(x, weight, eps)


def _rms_norm_c(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd [..., 1]) for float32 x and a 1-D weight."""
    x, weight = x.contiguous(), weight.contiguous()
    y = torch.empty_like(x)
    rstd = torch.empty(*x.shape[:-1], 1, dtype=torch.float32, device=x.device)
    _clib.library().gq_rms_norm(x.data_ptr(), weight.data_ptr(), y.data_ptr(), rstd.data_ptr(),
                                x.numel() // x.shape[-1], x.shape[-1], eps, _clib.threads())
    return y, rstd


_rms_norm_op = CustomOp("gptqwen::rms_norm", _rms_norm_c)


@_rms_norm_op.register_fake
def _(x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(*x.shape[:-1], 1)


def _rms_norm_backward_c(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, grad: torch.Tensor,
                         need_weight_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dw) of `rms_norm`; dw is empty when not needed."""
    x, weight, rstd, grad = x.contiguous(), weight.contiguous(), rstd.contiguous(), grad.contiguous()
    D = x.shape[-1]
    dx = torch.empty_like(x)
    dw = torch.empty(D if need_weight_grad else 0, dtype=torch.float32, device=x.device)
    code = _clib.library().gq_rms_norm_backward(x.data_ptr(), weight.data_ptr(), rstd.data_ptr(), grad.data_ptr(),
                                                dx.data_ptr(), dw.data_ptr() if need_weight_grad else None,
                                                x.numel() // D, D, _clib.threads())
    _clib.check(code, "gq_rms_norm_backward")
    return dx, dw


_rms_norm_backward_op = CustomOp("gptqwen::rms_norm_backward", _rms_norm_backward_c)


@_rms_norm_backward_op.register_fake
def _(x, weight, rstd, grad, need_weight_grad):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(x.shape[-1] if need_weight_grad else 0))


def _setup(ctx, inputs, output) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _backward(ctx, grad: torch.Tensor, _grad_rstd: torch.Tensor):
    x, weight, rstd = ctx.saved_tensors
    need_w = ctx.needs_input_grad[1]
    dx, dw = _rms_norm_backward_op(x, weight, rstd, grad, need_w)
    return dx, dw if need_w else None, None


_rms_norm_op.register_autograd(_backward, setup_context=_setup)
