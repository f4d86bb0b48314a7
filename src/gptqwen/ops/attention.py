"""Causal softmax attention of a whole sequence (training, scoring, prefill without a mask): `causal_attention`
(the C pass on fp32 CPU, `csrc/attention.c`) beside `causal_attention_reference` (torch's SDPA).

    o = causal_attention(q [B, T, hq, d], k [B, T, hk, d], v [B, T, hk, d])   # -> [B, T, hq, d], scale 1/sqrt(d)

The layout is the one the fused QKV projection produces and the output projection reads, so the C pass takes
views inside the QKV output and needs no transposes either way. It computes only the lower triangle and
keeps a head's T x T scores (so T <= 1024), forward and backward (which recomputes the probabilities from
the saved log-sum-exp, as flash attention does). It is the op `gptqwen::causal_attention` (backward
`gptqwen::causal_attention_backward`), which torch.compile keeps in its graph. Masks, KV caches and GQA
decoding stay with the model (`model/attention.py`), on SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptqwen.ops import _clib
from gptqwen.ops._custom import CustomOp

MAX_LEN = 1024  # the C pass keeps a head's T x T scores (4 MB at 1024); longer goes to SDPA


def causal_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of q [B, T, hq, d] over k, v [B, T, hk, d] (hq a multiple of hk): [B, T, hq, d]."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    # CPU flash attention runs ~40% slower (forward and backward) on V strided inside the fused qkv
    y = F.scaled_dot_product_attention(q, k, v.contiguous(), is_causal=True, enable_gqa=k.shape[1] != q.shape[1])
    return y.transpose(1, 2)


def _heads_contiguous(t: torch.Tensor) -> bool:
    """t [B, T, H, d] has its heads contiguous within uniformly strided rows (a view inside the QKV output)."""
    return t.stride(3) == 1 and t.stride(2) == t.shape[3] and t.stride(0) == t.shape[1] * t.stride(1)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of q [B, T, hq, d] over k, v [B, T, hk, d] (hq a multiple of hk): [B, T, hq, d]."""
    B, T, hq, d = q.shape
    # the C pass splits (sequence, KV head) pairs over threads where SDPA also splits query blocks: it needs a
    # pair per thread to keep them all busy
    if (_clib.usable(q, k, v, contiguous=False) and T <= MAX_LEN and B * k.shape[2] >= _clib.threads()
            and all(_heads_contiguous(t) for t in (q, k, v))):
        return _attention_op(q, k, v)[0]
    return causal_attention_reference(q, k, v)


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(t, its row stride) in a layout the C pass reads in place (a copy when it is not one)."""
    t = t if _heads_contiguous(t) else t.contiguous()
    return t, t.stride(1)


def _attention_c(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [B, T, hq, d] contiguous, lse [B, hq, T])."""
    B, T, hq, d = q.shape
    hk = k.shape[2]
    (q, qs), (k, ks), (v, vs) = _rows(q), _rows(k), _rows(v)
    o = torch.empty(B, T, hq, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(B, hq, T, dtype=torch.float32, device=q.device)
    code = _clib.library().gq_attention_forward(q.data_ptr(), qs, k.data_ptr(), ks, v.data_ptr(), vs, o.data_ptr(),
                                                lse.data_ptr(), B, T, hq, hk, d, _clib.threads())
    _clib.check(code, "gq_attention_forward")
    return o, lse


_attention_op = CustomOp("gptqwen::causal_attention", _attention_c)


@_attention_op.register_fake
def _(q, k, v):
    B, T, hq, d = q.shape
    return q.new_empty(B, T, hq, d), q.new_empty(B, hq, T)


def _attention_backward_c(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                          grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), contiguous and shaped like q, k, v."""
    B, T, hq, d = q.shape
    hk = k.shape[2]
    (q, qs), (k, ks), (v, vs) = _rows(q), _rows(k), _rows(v)
    o, lse, grad = o.contiguous(), lse.contiguous(), grad.contiguous()
    dq = torch.empty(B, T, hq, d, dtype=torch.float32, device=q.device)
    dk = torch.empty(B, T, hk, d, dtype=torch.float32, device=q.device)
    dv = torch.empty(B, T, hk, d, dtype=torch.float32, device=q.device)
    code = _clib.library().gq_attention_backward(q.data_ptr(), qs, k.data_ptr(), ks, v.data_ptr(), vs, o.data_ptr(),
                                                 lse.data_ptr(), grad.data_ptr(), dq.data_ptr(), dk.data_ptr(),
                                                 dv.data_ptr(), B, T, hq, hk, d, _clib.threads())
    _clib.check(code, "gq_attention_backward")
    return dq, dk, dv


_attention_backward_op = CustomOp("gptqwen::causal_attention_backward", _attention_backward_c)


@_attention_backward_op.register_fake
def _(q, k, v, o, lse, grad):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, *output)


def _backward(ctx, grad: torch.Tensor, _grad_lse: torch.Tensor):
    return _attention_backward_op(*ctx.saved_tensors, grad)


_attention_op.register_autograd(_backward, setup_context=_setup)
