"""Causal self-attention (MHA / GQA, optional QKV bias, QK-norm, local band) and the static KV cache.

One fused QKV matmul, QK-norm + RoPE from precomputed tables (`ops.norm_rope`), then attention: a whole
sequence without a mask (training without padding or packing, dense layer) is `ops.causal_attention`; masks,
KV caches and decoding use `F.scaled_dot_product_attention`. Masks are built once per forward in
`build_masks` and shared by all layers of the same kind. With Dual Chunk Attention on and a sequence longer than
one chunk, the forward's `DCAContext` (model/dca.py) rotates and attends instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gptqwen import ops
from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.model.dca import DCAContext
from gptqwen.model.norms import RMSNorm


class KVCache:
    """Preallocated keys/values [n_layer, B, n_kv_head, max_len, head_dim]; `length` slots are filled.

    The model writes the new tokens' K/V at `length:length+T` in every layer and advances `length` once at the
    end of its forward. `ntk_alpha` freezes Qwen v1's dynamic-NTK factor at prefill so cached keys stay valid.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None) -> None:
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # per-layer views made once: a decode step then writes with one copy_ and reads with one slice per tensor
        self._k_layers, self._v_layers = self.k.unbind(0), self.v.unbind(0)
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0
        self.ntk_alpha = 1.0

    def reset(self) -> None:
        self.length = 0
        self.ntk_alpha = 1.0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v [B, n_kv, T, D] after the filled slots; return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise UserError(f"sequence of {end} tokens does not fit the KV cache of {self.max_len}; "
                            "shorten the prompt or lower max_new_tokens")
        keys, values = self._k_layers[layer], self._v_layers[layer]
        keys.narrow(2, self.length, k.shape[2]).copy_(k)
        values.narrow(2, self.length, v.shape[2]).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)


@dataclass
class AttnContext:
    """Per-forward inputs shared by all attention layers."""

    cos: torch.Tensor | None  # [B, T, 1, D/2] or None for learned positions
    sin: torch.Tensor | None
    dense_mask: torch.Tensor | None  # bool [B|1, 1, T, S]; None -> see is_causal
    local_mask: torch.Tensor | None
    is_causal: bool  # use SDPA's causal path when the layer's mask is None
    cache: KVCache | None = None
    q_scale: torch.Tensor | None = None  # [B|1, T, 1, 1] Qwen v1 logn factor
    dca: DCAContext | None = None  # Dual Chunk Attention's remapped rotations (then cos/sin are unused)


def build_masks(cfg: Config, T: int, past: int, attention_mask: torch.Tensor | None,
                document_ids: torch.Tensor | None, device: torch.device
                ) -> tuple[torch.Tensor | None, torch.Tensor | None, bool]:
    """Return (dense_mask, local_mask, is_causal): boolean [B|1, 1, T, past+T] masks (True = may attend), or None
    where plain attention suffices (causal when is_causal, else everything, e.g. one decoded token)."""
    S = past + T
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # nothing padded: keep the fast path
    has_local = cfg.local_layers != "none" and S > cfg.local_band
    plain = attention_mask is None and document_ids is None and (past == 0 or T == 1)
    is_causal = plain and past == 0 and T > 1
    if plain and not has_local:
        return None, None, is_causal
    q = torch.arange(past, S, device=device)[:, None]  # cache slot of each query
    k = torch.arange(S, device=device)[None, :]
    base = k <= q
    if attention_mask is not None:
        base = base & attention_mask[:, None, None, :].bool()
    if document_ids is not None:
        base = base & (document_ids[:, None, :, None] == document_ids[:, None, None, :])
    base = base | (k == q)  # a query always sees itself, so fully padded rows stay finite (outputs unused)
    dense = None if plain else base
    local = base & ((q - k) < cfg.local_band) if has_local else None
    return dense, local, is_causal


class Attention(nn.Module):
    def __init__(self, cfg: Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.local = cfg.is_local_layer(layer_idx)
        q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, q + 2 * kv, bias=cfg.qkv_bias)
        self.proj = nn.Linear(q, cfg.n_embd, bias=cfg.bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        B, T, _ = x.shape
        hq, hk, d = self.n_head, self.n_kv_head, self.head_dim
        # q and k are adjacent heads of the fused projection: normalise and rotate them in one go
        qk, v = self.qkv(x).view(B, T, hq + 2 * hk, d).split((hq + hk, hk), dim=2)
        w = None
        if self.q_norm is not None:
            w = torch.cat((self.q_norm.weight.expand(hq, d), self.k_norm.weight.expand(hk, d)))
        if ctx.dca is not None:  # DCA rotates q three ways and k by its own positions
            if w is not None:
                qk = ops.rms_norm(qk, w, self.q_norm.eps)
            q, k = qk.split((hq, hk), dim=2)
            return self.proj(ctx.dca.attend(q, k, v, ctx.cache, self.layer_idx, ctx.q_scale).reshape(B, T, hq * d))
        if ctx.cos is not None:
            qk = ops.norm_rope(qk, ctx.cos, ctx.sin, w, self.q_norm.eps if w is not None else 0.0)
        elif w is not None:
            qk = ops.rms_norm(qk, w, self.q_norm.eps)
        q, k = qk.split((hq, hk), dim=2)
        if ctx.q_scale is not None:
            q = (q.float() * ctx.q_scale).to(q.dtype)
        mask = ctx.local_mask if self.local else ctx.dense_mask
        if ctx.cache is None and mask is None and ctx.is_causal:  # training / scoring a whole sequence
            return self.proj(ops.causal_attention(q, k, v).reshape(B, T, hq * d))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)
        else:  # CPU flash attention runs ~40% slower (forward and backward) on V strided inside the fused qkv
            v = v.contiguous()
        if hk != hq and T == 1:
            # one decoded token: the queries sharing a KV head become rows of one attention over that head
            # (a [B|1, 1, 1, S] mask broadcasts over them), so the cached keys are never copied
            y = F.scaled_dot_product_attention(q.reshape(B, hk, hq // hk, d), k, v, attn_mask=mask)
            return self.proj(y.reshape(B, T, hq * d))
        # SDPA's own GQA reads shared K/V heads without copies; GPU kernels with a mask lack it, so expand there
        gqa = hk != hq and (mask is None or q.device.type == "cpu")
        if hk != hq and not gqa:
            k = k.repeat_interleave(hq // hk, dim=1)
            v = v.repeat_interleave(hq // hk, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and ctx.is_causal,
                                           enable_gqa=gqa)
        return self.proj(y.transpose(1, 2).reshape(B, T, hq * d))
