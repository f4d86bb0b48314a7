"""A whole decode step of a pre-norm model in one C call (`csrc/decode.c`): `DecodeWeights` names the tensors,
`PackedModel` lays them out as the C structs, `decode_step` runs a step.

    packed = PackedModel(DecodeWeights(...))   # pointers into the caller's tensors, which must stay unchanged
    decode_step(packed, tokens, positions, starts, fill, cos, sin, k_cache, v_cache, logits)

The reference is the model's own forward with a KV cache (`model/`, a layer above this one): the C step
computes the same thing — RMSNorm or LayerNorm, QK-norm and RoPE or learned positions, GQA over the cache,
SwiGLU or GELU, float32 or q8_0/q4_1 products — and tests/test_native.py compares their logits at every step.
`infer/native.py` decides which models qualify and collects their tensors.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from gptqwen.ops import _clib


@dataclass
class LinearWeights:
    """One projection: float32 `weight` [N, K] (fmt "f32") or q8_0/q4_1 blocks (`weight` = qs, scales `d`,
    mins `m`; ops/quant.py), and an optional bias [N]."""

    fmt: str
    out_features: int
    in_features: int
    weight: torch.Tensor
    d: torch.Tensor | None = None
    m: torch.Tensor | None = None
    bias: torch.Tensor | None = None


@dataclass
class LayerWeights:
    """One block: qkv rows [q heads | k heads | v heads]; `up` is [gate | up] (SwiGLU) or fc (GELU); norm biases
    given means LayerNorm, else RMSNorm; q_norm / k_norm are QK-norm weights [head_dim] or None."""

    qkv: LinearWeights
    proj: LinearWeights
    up: LinearWeights
    down: LinearWeights
    ln1: torch.Tensor
    ln2: torch.Tensor
    ln1_b: torch.Tensor | None = None
    ln2_b: torch.Tensor | None = None
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None


@dataclass
class DecodeWeights:
    """The model: sizes, norms' eps, embeddings [vocab, dim], learned positions [max_len, dim] or None (RoPE
    tables are then passed to each step), the final norm, the LM head and the blocks."""

    n_head: int
    n_kv_head: int
    head_dim: int
    intermediate: int
    gelu: bool
    eps: float
    qk_eps: float
    embed: torch.Tensor
    wpe: torch.Tensor | None
    ln_f: torch.Tensor
    ln_f_b: torch.Tensor | None
    head: LinearWeights
    layers: list[LayerWeights]


class PackedModel:
    """The C structs of one `DecodeWeights` (float32 or block tensors, contiguous, on the CPU), keeping every
    tensor they point into alive."""

    def __init__(self, weights: DecodeWeights) -> None:
        self.weights = weights
        w = weights

        def lin(l: LinearWeights) -> _clib.Linear:
            return _clib.Linear(_clib.FORMAT_CODES[l.fmt], l.out_features, l.in_features, _clib.ptr(l.weight),
                                _clib.ptr(l.d), _clib.ptr(l.m), _clib.ptr(l.bias))

        self.layers = (_clib.Layer * len(w.layers))()
        for i, layer in enumerate(w.layers):
            self.layers[i] = _clib.Layer(lin(layer.qkv), lin(layer.proj), lin(layer.up), lin(layer.down),
                                         *(_clib.ptr(t) for t in (layer.ln1, layer.ln2, layer.ln1_b, layer.ln2_b,
                                                                  layer.q_norm, layer.k_norm)))
        self.model = _clib.Model(len(w.layers), w.embed.shape[1], w.n_head, w.n_kv_head, w.head_dim, w.intermediate,
                                 w.embed.shape[0], int(w.gelu), w.eps, w.qk_eps, _clib.ptr(w.embed),
                                 _clib.ptr(w.wpe), _clib.ptr(w.ln_f), _clib.ptr(w.ln_f_b), lin(w.head), self.layers)


def decode_step(packed: PackedModel, tokens: torch.Tensor, positions: torch.Tensor, starts: torch.Tensor, fill: int,
                cos: torch.Tensor | None, sin: torch.Tensor | None, k_cache: torch.Tensor, v_cache: torch.Tensor,
                logits: torch.Tensor) -> None:
    """Feed tokens[b] (int64 [B]) at positions[b]; row b attends to cache slots starts[b] .. fill. Writes this
    step's keys/values at slot `fill` of k_cache/v_cache [n_layer, B, n_kv_head, max_len, head_dim] (float32,
    contiguous) and the logits [B, vocab] into `logits`. The caller validates the indices (C trusts them)."""
    code = _clib.library().gq_decode_step(ctypes.byref(packed.model), tokens.shape[0], tokens.data_ptr(),
                                          positions.data_ptr(), starts.data_ptr(), fill, _clib.ptr(cos),
                                          _clib.ptr(sin), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[3],
                                          logits.data_ptr(), _clib.threads(), 1)
    _clib.check(code, "gq_decode_step")
