"""Dual Chunk Attention (DCA): training-free context extension for RoPE models (An et al. 2024, "Training-Free
Long-Context Scaling of Large Language Models"; Qwen2 uses it with YaRN).

A model trained on c tokens never saw a relative distance of c or more. DCA cuts the sequence into chunks of s
tokens, gives every key the position `j mod s`, and gives the query one position per group of keys (c = s + w):

    intra-chunk (the query's own chunk):    i mod s                   distance i - j, exact
    successive chunk (the one before):      s + min(i mod s, w - 1)   exact for the first w queries of a chunk
    inter-chunk (two or more before):       c - 1                     distance c - 1 - (j mod s) in [w, c - 1]

so no distance reaches c. Each group is a partial softmax attention with its own log-sum-exp, and the partials are
merged exactly (`merge_partials`), as flash attention merges blocks. On CPU each partial is PyTorch's flash kernel
(which returns the log-sum-exp), so memory grows linearly with the context (no T x T score matrix). Keys are
stored in the KV cache already rotated at `j mod s`, so a decode step rotates only its query.

Switched on by `Config.dca = {"chunk_size": s, "local_size": w}`; composes with every RoPE table (plain, YaRN,
Llama-3, Qwen v1's NTK and logn). While the whole sequence fits one chunk, the model takes its ordinary
attention path (the positions are then unchanged), so short inputs give exactly the plain model's results.
`extend_context(model, ...)` sets YaRN / DCA / a longer context on a loaded model (what `gptqwen eval` uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gptqwen import ops
from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.model.rope import Rotary


def dca_positions(pos: torch.Tensor, chunk: int, local: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remapped positions of absolute positions `pos`: (key and intra-chunk query, successive-chunk query,
    inter-chunk query)."""
    intra = pos % chunk
    return intra, chunk + intra.clamp(max=local - 1), torch.full_like(pos, chunk + local - 1)


def partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q [B, hq, Tq, d] over k, v [B, hk, Sk, d] (GQA: query head h reads KV head h // (hq/hk));
    `causal`: q and k cover the same positions and query r sees keys <= r. Returns (out [B, hq, Tq, d],
    lse [B, hq, Tq, 1]) in float32. On CPU this is PyTorch's flash kernel, which returns the log-sum-exp too
    (memory linear in the keys); elsewhere the scores are formed in full."""
    B, hq, Tq, d = q.shape
    hk, g = k.shape[1], hq // k.shape[1]
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64, torch.bfloat16):
        if causal:  # the rows of a grouped query would break the causal alignment: give every head its K/V
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        else:  # the query heads sharing a KV head become rows of one attention, so K/V are never repeated
            q = q.reshape(B, hk, g * Tq, d)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v.contiguous(), 0.0, causal)[:2]
        return out.float().reshape(B, hq, Tq, d), lse.float().reshape(B, hq, Tq, 1)
    return partial_attention_reference(q, k, v, causal)


def partial_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`partial_attention` with the scores formed in full (the path off CPU)."""
    B, hq, Tq, d = q.shape
    hk, g = k.shape[1], hq // k.shape[1]
    scores = (q.float().reshape(B, hk, g * Tq, d) @ k.float().transpose(-1, -2)) * (1.0 / math.sqrt(d))
    if causal:
        scores = scores.masked_fill(~torch.ones(Tq, Tq, dtype=torch.bool, device=q.device).tril().repeat(g, 1),
                                    float("-inf"))
    lse = scores.logsumexp(-1, keepdim=True)
    out = (scores - lse).exp_() @ v.float()
    return out.view(B, hq, Tq, d), lse.view(B, hq, Tq, 1)


def merge_partials(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Exact softmax over the union of the partials' keys: each output weighted by exp(lse_i - lse_all)."""
    if len(parts) == 1:
        return parts[0][0]
    lse = torch.logsumexp(torch.cat([p[1] for p in parts], -1), -1, keepdim=True)
    return sum(out * (part_lse - lse).exp() for out, part_lse in parts)


def dca_attend(qs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], k: torch.Tensor, v: torch.Tensor,
               first: int, chunk: int) -> torch.Tensor:
    """DCA of one sequence batch whose key slot j holds position j: queries (intra, successive, inter rotations),
    each [B, hq, T, d], at positions first..first+T-1 over keys/values [B, hk, first+T, d] (keys rotated at
    j mod chunk). Returns [B, hq, T, d] float32."""
    q_intra, q_succ, q_inter = qs
    T = q_intra.shape[2]
    outs, p, end = [], first, first + T
    while p < end:  # the queries of one chunk at a time: [p, e) in the chunk starting at lo
        lo = p // chunk * chunk
        e = min(end, lo + chunk)
        rows = slice(p - first, e - first)
        parts = [partial_attention(q_intra[:, :, rows], k[:, :, p:e], v[:, :, p:e], causal=True)]
        if p > lo:  # keys of the same chunk before the first query (a decode step, a prefill in pieces)
            parts.append(partial_attention(q_intra[:, :, rows], k[:, :, lo:p], v[:, :, lo:p], causal=False))
        if lo >= chunk:
            parts.append(partial_attention(q_succ[:, :, rows], k[:, :, lo - chunk:lo], v[:, :, lo - chunk:lo], False))
        if lo >= 2 * chunk:
            parts.append(partial_attention(q_inter[:, :, rows], k[:, :, :lo - chunk], v[:, :, :lo - chunk], False))
        outs.append(merge_partials(parts))
        p = e
    return torch.cat(outs, 2)


@dataclass
class DCAContext:
    """One forward's DCA inputs, shared by all layers: cos/sin [B|1, T, 1, D] at the key (= intra-chunk query),
    successive-chunk and inter-chunk positions, and where each row's real tokens start (left padding)."""

    chunk: int
    key: tuple[torch.Tensor, torch.Tensor]
    succ: tuple[torch.Tensor, torch.Tensor]
    inter: tuple[torch.Tensor, torch.Tensor]
    starts: list[int] | None  # first real cache slot of each row; None = no padding

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache, layer: int,
               q_scale: torch.Tensor | None) -> torch.Tensor:
        """q [B, T, hq, d], k/v [B, T, hk, d] (QK-normed, not rotated) -> [B, T, hq, d]; appends k/v to `cache`."""
        T = q.shape[1]
        k = ops.norm_rope(k, *self.key)
        qs = tuple(ops.norm_rope(q, *cs) for cs in (self.key, self.succ, self.inter))
        if q_scale is not None:
            qs = tuple((x.float() * q_scale).to(x.dtype) for x in qs)
        qs = tuple(x.transpose(1, 2) for x in qs)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        S = k.shape[2]
        if self.starts is None:
            y = dca_attend(qs, k, v, S - T, self.chunk)
        else:  # each row's positions count from its first real slot: attend row by row over its real keys
            y = torch.zeros(q.shape[0], q.shape[2], T, q.shape[3], dtype=torch.float32, device=q.device)
            for b, s0 in enumerate(self.starts):
                real = min(T, S - s0)  # queries at real slots (padded prefill slots keep a zero output)
                if real <= 0:  # a prefill chunk of padding only
                    continue
                row = tuple(x[b:b + 1, :, T - real:] for x in qs)
                y[b:b + 1, :, T - real:] = dca_attend(row, k[b:b + 1, :, s0:], v[b:b + 1, :, s0:], S - s0 - real,
                                                      self.chunk)
        return y.to(q.dtype).transpose(1, 2)


def dca_context(cfg: Config, rotary: Rotary, position_ids: torch.Tensor, past: int, T: int,
                attention_mask: torch.Tensor | None, document_ids: torch.Tensor | None, dtype: torch.dtype
                ) -> DCAContext | None:
    """The forward's DCA context, or None when DCA is off or the whole sequence fits one chunk (plain attention
    is then the same computation). Remapped positions stay below chunk + local <= the trained length, so Qwen v1's
    dynamic NTK (a remedy for positions past it) stays off: its tables are the plain ones."""
    if cfg.dca is None or past + T <= cfg.dca["chunk_size"]:
        return None
    if document_ids is not None:
        raise UserError("Dual Chunk Attention does not support packed sequences (document_ids); "
                        "train without dca and switch it on for inference")
    chunk, local = cfg.dca["chunk_size"], cfg.dca["local_size"]
    starts = None
    if attention_mask is not None and not bool(attention_mask.all()):
        lengths = attention_mask.long().sum(-1)
        starts = (attention_mask.shape[-1] - lengths).tolist()
        slots = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
        if not torch.equal(attention_mask.bool(), slots[None, :] >= (slots.numel() - lengths)[:, None]):
            raise UserError("Dual Chunk Attention needs left-padded rows (zeros only before each row's tokens)")
    tables = []
    for pos in dca_positions(position_ids, chunk, local):
        cos, sin = rotary(pos, chunk + local, position_ids.device)
        tables.append((cos.to(dtype), sin.to(dtype)))
    return DCAContext(chunk, *tables, starts)


def extend_context(model: torch.nn.Module, context: int, yarn: float | None = None,
                   dca: tuple[int, int] | None = None, allow_longer: bool = False) -> None:
    """Let a loaded model take `context` tokens: YaRN with `yarn` as factor over its trained length and/or DCA with
    (chunk_size, local_size); `allow_longer` runs plain RoPE past the trained length (to measure that it fails).
    Rebuilds the RoPE tables; UserError when the model cannot take `context` tokens."""
    cfg = model.config
    if yarn is None and dca is None and not allow_longer:
        if context > cfg.max_seq_len:
            raise UserError(f"a context of {context} tokens is longer than the model's {cfg.max_seq_len}; extend it "
                            "with --yarn FACTOR and/or --dca CHUNK LOCAL, or run plain RoPE with --allow-longer")
        return
    if cfg.pos != "rope":
        raise UserError(f"a context of {context} tokens needs RoPE to extend; this model has learned positions "
                        f"(GPT) and stops at {cfg.max_seq_len} tokens")
    if cfg.dynamic_ntk or cfg.logn_attn:
        raise UserError("Qwen v1 models extend their context with their own dynamic NTK and logn scaling; "
                        "drop --yarn/--dca/--allow-longer")
    trained = cfg.trained_len()
    scaling = cfg.rope_scaling
    if yarn is not None:
        if yarn < 1:
            raise UserError(f"--yarn factor must be >= 1, got {yarn}")
        scaling = {"rope_type": "yarn", "factor": float(yarn), "original_max_position_embeddings": trained}
    # validated at the trained length first: the longer max_seq_len below would otherwise pass as the trained one
    dca_cfg = None if dca is None else cfg.replace(dca={"chunk_size": int(dca[0]), "local_size": int(dca[1])}).dca
    new = cfg.replace(rope_scaling=scaling, max_seq_len=max(context, cfg.max_seq_len), dca=dca_cfg)
    model.config = new  # the layers keep nothing from the config that changes here
    model.rotary = Rotary(new.head_dim, new.rope_theta, new.rope_scaling, new.max_seq_len)
