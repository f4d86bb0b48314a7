"""QK-norm + RoPE on the query/key heads: `norm_rope` (the C pass on fp32 CPU, `csrc/rope.c`) beside
`norm_rope_reference` (PyTorch, transformers' arithmetic).

    y = norm_rope(x [B, T, H, D], cos, sin [B|1, T, 1, D], weight [H, D] | None, eps)

The tables come from `model.rope.Rotary`: full width, the sine pre-signed as [-sin, sin], so the rotation is
x cos + swap_halves(x) sin. `weight` adds a per-head RMSNorm first (Qwen3's QK-norm). The C pass reads x in
place inside the fused QKV projection's output (a strided view) and writes a contiguous result; its backward
is the rotation's transpose and the norm's closed form. It is the op `gptqwen::norm_rope` (backward
`gptqwen::norm_rope_backward`), which torch.compile keeps in its graph.
"""

from __future__ import annotations

import torch

from gptqwen.ops import _clib
from gptqwen.ops._custom import CustomOp
from gptqwen.ops.norms import rms_norm_reference


def norm_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, weight: torch.Tensor | None = None,
                        eps: float = 1e-6) -> torch.Tensor:
    """RoPE of x [B, T, H, D] after an optional per-head RMSNorm with weight [H, D]."""
    if weight is not None:
        x = rms_norm_reference(x, weight, eps)
    return x * cos.to(x.dtype) + x.roll(x.shape[-1] // 2, dims=-1) * sin.to(x.dtype)


def norm_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, weight: torch.Tensor | None = None,
              eps: float = 1e-6) -> torch.Tensor:
    """RoPE of x [B, T, H, D] after an optional per-head RMSNorm with weight [H, D]."""
    B, T, H, D = x.shape
    if (_clib.usable(x, contiguous=False) and _clib.usable(cos, sin, weight) and D % 2 == 0
            and cos.shape[-3:] == (T, 1, D) and cos.shape[0] in (1, B) and sin.shape == cos.shape
            and (weight is None or weight.shape == (H, D))):
        return _norm_rope_op(x, cos, sin, weight, eps)[0]
    return norm_rope_reference(x, cos, sin, weight, eps)


def _layout(x: torch.Tensor, cos: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(x, its row stride, the tables' batch stride) with x [B, T, H, D] in a layout the C pass reads in place:
    heads contiguous within uniformly strided rows (a view inside the fused QKV output is), else a copy."""
    B, T, H, D = x.shape
    if not (x.stride(3) == 1 and x.stride(2) == D and x.stride(0) == T * x.stride(1)):
        x = x.contiguous()
    return x, x.stride(1), (T * D if cos.shape[0] == B and B > 1 else 0)


def _norm_rope_c(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, weight: torch.Tensor | None,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [B, T, H, D] contiguous, rstd [B, T, H], empty without a weight)."""
    B, T, H, D = x.shape
    cos, sin = cos.contiguous(), sin.contiguous()
    x, row_stride, table_stride = _layout(x, cos)
    y = torch.empty(B, T, H, D, dtype=torch.float32, device=x.device)
    rstd = torch.empty((B, T, H) if weight is not None else (0,), dtype=torch.float32, device=x.device)
    _clib.library().gq_norm_rope(x.data_ptr(), row_stride, cos.data_ptr(), sin.data_ptr(), table_stride,
                                 _clib.ptr(weight if weight is None else weight.contiguous()), y.data_ptr(),
                                 rstd.data_ptr() if weight is not None else None, B, T, H, D, eps, _clib.threads())
    return y, rstd


_norm_rope_op = CustomOp("gptqwen::norm_rope", _norm_rope_c)


@_norm_rope_op.register_fake
def _(x, cos, sin, weight, eps):
    B, T, H, D = x.shape
    return x.new_empty(B, T, H, D), x.new_empty((B, T, H) if weight is not None else (0,))


def _norm_rope_backward_c(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, weight: torch.Tensor | None,
                          rstd: torch.Tensor, grad: torch.Tensor, need_weight_grad: bool
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx [B, T, H, D] contiguous, dweight [H, D], empty when not needed)."""
    B, T, H, D = x.shape
    cos, sin, rstd, grad = cos.contiguous(), sin.contiguous(), rstd.contiguous(), grad.contiguous()
    x, row_stride, table_stride = _layout(x, cos)
    need_weight_grad = need_weight_grad and weight is not None
    dx = torch.empty(B, T, H, D, dtype=torch.float32, device=x.device)
    dw = torch.empty((H, D) if need_weight_grad else (0,), dtype=torch.float32, device=x.device)
    code = _clib.library().gq_norm_rope_backward(
        x.data_ptr(), row_stride, cos.data_ptr(), sin.data_ptr(), table_stride,
        _clib.ptr(weight if weight is None else weight.contiguous()), _clib.ptr(rstd if weight is not None else None),
        grad.data_ptr(), dx.data_ptr(), dw.data_ptr() if need_weight_grad else None, B, T, H, D, _clib.threads())
    _clib.check(code, "gq_norm_rope_backward")
    return dx, dw


_norm_rope_backward_op = CustomOp("gptqwen::norm_rope_backward", _norm_rope_backward_c)


@_norm_rope_backward_op.register_fake
def _(x, cos, sin, weight, rstd, grad, need_weight_grad):
    B, T, H, D = x.shape
    return x.new_empty(B, T, H, D), x.new_empty((H, D) if need_weight_grad and weight is not None else (0,))


def _setup(ctx, inputs, output) -> None:
    x, cos, sin, weight, _ = inputs
    ctx.save_for_backward(x, cos, sin, weight, output[1])


def _backward(ctx, grad: torch.Tensor, _grad_rstd: torch.Tensor):
    x, cos, sin, weight, rstd = ctx.saved_tensors
    need_w = weight is not None and ctx.needs_input_grad[3]
    dx, dw = _norm_rope_backward_op(x, cos, sin, weight, rstd, grad, need_w)
    return dx, None, None, dw if need_w else None, None


_norm_rope_op.register_autograd(_backward, setup_context=_setup)
