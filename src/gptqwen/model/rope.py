"""Rotary position embeddings: plain RoPE, linear, YaRN and Llama-3 scaling, Qwen v1 dynamic NTK and logn.

Frequencies follow transformers' `modeling_rope_utils.py` (fp32, half-split "rotate_half" layout). The cos/sin
tables are computed once per length and indexed by position ids, so a training or decode step does no
trigonometry. Applying them (with Qwen3's QK-norm) is `ops.norm_rope`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gptqwen.errors import UserError

SUPPORTED_ROPE_TYPES = ("default", "linear", "yarn", "llama3")


def _base_inv_freq(dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _yarn(dim: int, base: float, s: dict) -> tuple[torch.Tensor, float]:
    factor = float(s["factor"])
    orig = s["original_max_position_embeddings"]
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all = s.get("mscale"), s.get("mscale_all_dim")

        def get_mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all) if mscale and mscale_all \
            else get_mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def corr_dim(rotations: float) -> float:  # dimension whose wavelength fits `rotations` times into orig
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1 = high-frequency dims kept as is, 0 = low-frequency dims interpolated
    return interpolation * (1 - keep) + extrapolation * keep, float(attention_factor)


def _llama3(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return torch.where(medium, smoothed, scaled)


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None) -> tuple[torch.Tensor, float]:
    """(inv_freq [head_dim/2] fp32, attention_factor) for a rope_scaling dict in transformers' format."""
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind not in SUPPORTED_ROPE_TYPES:
        raise UserError(f"rope_scaling type '{kind}' is not supported; use one of {', '.join(SUPPORTED_ROPE_TYPES)}")
    inv_freq = _base_inv_freq(head_dim, theta)
    if kind == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
    if kind == "yarn":
        return _yarn(head_dim, theta, scaling)
    if kind == "llama3":
        return _llama3(inv_freq, scaling), 1.0
    return inv_freq, 1.0


def qwen_ntk_alpha(total_len: int, train_len: int) -> float:
    """Qwen v1 dynamic NTK: alpha = 2^ceil(log2(n / L) + 1) - 1, at least 1."""
    if total_len <= train_len:
        return 1.0
    return max(2 ** math.ceil(math.log(total_len / train_len, 2) + 1) - 1, 1.0)


def logn_scale(positions: torch.Tensor, train_len: int) -> torch.Tensor:
    """Qwen v1 logn attention: query at slot p is scaled by log_L(p + 1) once p + 1 > L."""
    p1 = (positions + 1).float()
    return torch.where(p1 > train_len, p1.log() / math.log(train_len), torch.ones_like(p1))


class Rotary(nn.Module):
    """Owns the cos/sin tables of one model; `forward(position_ids)` returns (cos, sin) of shape [B, T, 1, D/2]."""

    def __init__(self, head_dim: int, theta: float, scaling: dict | None, min_len: int) -> None:
        super().__init__()
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        # a plain fp32 CPU tensor, not a buffer: it must survive model.to(bfloat16) and meta-device construction
        with torch.device("cpu"):
            self.inv_freq, self.attention_factor = rope_frequencies(head_dim, theta, scaling)
        self.min_len = min(min_len, 8192)  # longer tables are grown on demand
        self._tables: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, needed: int, alpha: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._tables.get(alpha)
        if cached is not None and cached[0].shape[0] >= needed and cached[0].device == device:
            return cached
        if torch.is_inference_mode_enabled():  # a cached table must serve a later training forward too
            with torch.inference_mode(False):
                return self._table(needed, alpha, device)
        length = max(self.min_len, 1 << max(needed - 1, 1).bit_length())
        if alpha == 1.0:
            inv_freq = self.inv_freq.to(device)
        else:  # NTK-aware base growth (Qwen v1)
            inv_freq = _base_inv_freq(self.head_dim, self.theta * alpha ** (self.head_dim / (self.head_dim - 2))).to(device)
        freqs = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
        cos, sin = freqs.cos() * self.attention_factor, freqs.sin() * self.attention_factor
        # full-width tables; the sine carries rotate_half's sign so applying them is two multiplies and an add
        table = (torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1))
        self._tables[alpha] = table
        return table

    def forward(self, position_ids: torch.Tensor | None, bound: int, device: torch.device, alpha: float = 1.0,
                start: int = 0, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 cos/sin [B|1, T, 1, D] for `position_ids` [B, T], or for positions start..start+length-1 when it
        is None (length defaults to bound - start); `bound` is an upper bound of the largest position + 1."""
        cos, sin = self._table(bound, alpha, device)
        if position_ids is None:  # the common training case: a slice, no gather
            end = bound if length is None else start + length
            return cos[None, start:end, None], sin[None, start:end, None]
        return cos[position_ids].unsqueeze(2), sin[position_ids].unsqueeze(2)
