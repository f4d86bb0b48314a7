"""Normalisation layers: LayerNorm (GPT) and RMSNorm (Qwen), numerically as in transformers.

RMSNorm has a hand-written backward: autograd's decomposition of `F.rms_norm` records about a dozen small ops
(upcasts, pow, mean, rsqrt, ...) per call, which dominates tiny models on CPU; the closed form needs a handful.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _RMSNormFn(torch.autograd.Function):
    """y = w * (x * rsqrt(mean(x^2) + eps)) with the normalisation in fp32 and cast back before the weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = _upcast(x)
        rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        xhat = _upcast(x) * rstd
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad * xhat.to(grad.dtype)).sum_to_size(weight.shape)
        gx = _upcast(grad * weight)
        # d/dx of x * rstd: rstd * (g - xhat * mean(g * xhat))
        grad_x = ((gx - xhat * (gx * xhat).mean(-1, keepdim=True)) * rstd).to(x.dtype)
        return grad_x, grad_w, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dim of x; `weight` broadcasts against x (e.g. [D] or [heads, D])."""
    if x.dtype == torch.float32 and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        # inference in fp32: torch's fused kernel is the same arithmetic at a third of the cost (decode)
        if weight.dim() == 1:
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
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
