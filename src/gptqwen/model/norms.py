"""Normalisation layers: LayerNorm (GPT) and RMSNorm (Qwen), numerically as in transformers.

RMSNorm has a hand-written backward: autograd's decomposition of `F.rms_norm` records about a dozen small ops
(upcasts, pow, mean, rsqrt, ...) per call, which dominates tiny models on CPU; the closed form needs a handful.
On CPU in fp32 the forward and the backward are our C kernels (`gptqwen/csrc/norms.c`; torch's CPU rms_norm itself
runs as ~8 ops), in training and inference alike so both give the same numbers; elsewhere torch's fused kernel,
which also returns the rstd the backward needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptqwen import kernels


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


try:  # one kernel returning (y, rstd); torch >= 2.8
    fused_rms_norm = torch.ops.aten._fused_rms_norm
except (AttributeError, RuntimeError):
    fused_rms_norm = None


def _kernel_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the C kernel (gptqwen/csrc/norms.c) can normalise x: see `kernels.usable`, and a 1-D weight."""
    return weight.dim() == 1 and kernels.usable(x, weight)


class _RMSNormFn(torch.autograd.Function):
    """y = w * (x * rstd), rstd = rsqrt(mean(x^2) + eps), normalised in fp32 and cast back before the weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        fast = _kernel_ok(x, weight) and kernels.rms_norm(x, weight, eps, with_rstd=True)
        if fast:  # the same kernel as inference below, so both give identical numbers
            y, rstd = fast
        elif x.dtype == torch.float32 and weight.dim() == 1 and fused_rms_norm is not None:
            y, rstd = fused_rms_norm(x, [x.shape[-1]], weight, eps)
        else:
            xf = _upcast(x)
            rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))
            y = weight * (xf * rstd).to(x.dtype)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        if _kernel_ok(x, weight) and rstd.dtype == torch.float32:  # one C pass (csrc/norms.c)
            fast = kernels.rms_norm_backward(x, weight, rstd, grad.contiguous(), ctx.needs_input_grad[1])
            if fast is not None:
                return fast[0], fast[1], None
        xf, gf = _upcast(x), _upcast(grad)
        gx = gf * xf
        # dx = rstd * g*w - x * rstd^3 * mean(g*w*x);  dw = sum over rows of g * x * rstd
        if weight.dim() == 1:  # row dot products and the column sum as matrix-vector products: no temporaries
            dot = (gx @ weight.to(gx.dtype)).unsqueeze(-1)
            grad_w = gx.reshape(-1, x.shape[-1]).t() @ rstd.reshape(-1) if ctx.needs_input_grad[1] else None
        else:  # per-head weights (QK-norm without RoPE)
            dot = (gx * weight).sum(-1, keepdim=True)
            grad_w = (gx * rstd).sum_to_size(weight.shape) if ctx.needs_input_grad[1] else None
        coef = dot.mul_(rstd.pow(3)).div_(x.shape[-1])
        grad_x = (gf * weight).mul_(rstd).sub_(xf * coef).to(x.dtype)
        return grad_x, None if grad_w is None else grad_w.to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dim of x; `weight` broadcasts against x (e.g. [D] or [heads, D])."""
    if x.dtype == torch.float32 and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        # inference in fp32: our C kernel where it built (torch's CPU rms_norm is ~8 ops), else torch's
        if weight.dim() == 1:
            y = kernels.rms_norm(x, weight, eps) if _kernel_ok(x, weight) else None
            return y if y is not None else F.rms_norm(x, (x.shape[-1],), weight, eps)
        return F.rms_norm(x, (x.shape[-1],), None, eps) * weight
    return _RMSNormFn.apply(x, weight, eps)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    return nn.LayerNorm(dim, eps=eps) if kind == "layernorm" else RMSNorm(dim, eps)
