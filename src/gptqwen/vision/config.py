"""Vision encoder configs and VLM presets: a `VisionConfig` per encoder, a VLM = decoder preset + encoder.

    from gptqwen.vision.config import VLM_PRESETS, vlm_config, vlm_num_params
    dec, vis = vlm_config("qwen2.5-vl-7b")        # (Config, VisionConfig)
    vlm_num_params("qwen2.5-vl-7b")               # {"vision": ..., "projector": ..., "decoder": ..., "total": ...}

The Qwen2.5-VL shapes follow its published config.json (ViT width 1280, depth 32, 16 heads, SwiGLU width 3420,
14-pixel patches over 2 frames, 2x2 merge into the decoder width). Its windowed attention in most ViT layers
changes which patches attend to which, not the parameter count; this encoder attends over the whole image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from gptqwen.config import Config
from gptqwen.errors import UserError, closest


@dataclass
class VisionConfig:
    """A ViT: patches -> pre-norm blocks with 2D RoPE -> 2x2 merge -> MLP into the decoder's width."""

    patch_size: int = 14
    temporal_patch_size: int = 2  # Qwen2-VL patches span 2 frames; a still image is repeated to fill them
    in_channels: int = 3
    width: int = 1280
    depth: int = 32
    n_head: int = 16
    intermediate_size: int = 3420
    mlp: str = "swiglu"  # swiglu (Qwen2.5-VL) | gelu (Qwen2-VL)
    norm: str = "rmsnorm"  # rmsnorm (Qwen2.5-VL) | layernorm (Qwen2-VL)
    norm_eps: float = 1e-6
    merge_size: int = 2  # merge_size x merge_size patches become one decoder token (projector "merge")
    projector: str = "merge"  # merge (Qwen2-VL: 2x2 patches -> MLP) | resampler (Qwen-VL: learnable queries attend)
    resampler_queries: int = 0  # resampler: decoder tokens per image (a square number; Qwen-VL: 256)
    out_dim: int = 2048  # the decoder's n_embd
    rope_theta: float = 10000.0
    patch_norm: bool = False  # normalise each patch's pixels (zero mean, unit variance) before the embedding
    abs_pos: str = "none"  # none (Qwen2-VL: 2D RoPE only) | sincos (also fixed 2D sine-cosine positions on the patches)
    min_pixels: int = 56 * 56
    max_pixels: int = 1280 * 28 * 28  # larger images are scaled down to fit (Qwen2-VL's default upper bound)

    @property
    def head_dim(self) -> int:
        return self.width // self.n_head

    @property
    def factor(self) -> int:
        """Image sides are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    def tokens_for(self, grid: tuple[int, int]) -> int:
        """Decoder tokens (<|image_pad|>) of an image with `grid` patch rows and columns."""
        if self.projector == "resampler":
            return self.resampler_queries
        return grid[0] * grid[1] // self.merge_size**2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VisionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown vision config keys {sorted(unknown)}; known: {', '.join(sorted(known))}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.width % self.n_head or self.head_dim % 4:
            raise UserError(f"vision width {self.width} must split into {self.n_head} heads of a multiple of 4 "
                            "(2D RoPE rotates rows in one half of each head and columns in the other)")
        if self.abs_pos not in ("none", "sincos"):
            raise UserError(f"vision abs_pos must be none or sincos, not '{self.abs_pos}'")
        if self.mlp not in ("swiglu", "gelu") or self.norm not in ("rmsnorm", "layernorm"):
            raise UserError("vision mlp must be swiglu or gelu, norm rmsnorm or layernorm")
        side = math.isqrt(self.resampler_queries)
        if self.projector not in ("merge", "resampler") or (self.projector == "resampler" and (
                side < 1 or side * side != self.resampler_queries or self.out_dim % min(self.out_dim, 128))):
            raise UserError("vision projector must be merge, or resampler with resampler_queries a square number "
                            "(e.g. 16, 256) and out_dim a multiple of 128 (or below it)")  # fmt: skip
        if self.min_pixels > self.max_pixels or self.max_pixels < self.factor**2:
            raise UserError(f"vision min_pixels/max_pixels ({self.min_pixels}/{self.max_pixels}) must allow at least "
                            f"one {self.factor}x{self.factor} tile")

    def num_params(self) -> dict[str, int]:
        """Parameters of the encoder (patch embedding + blocks) and of the projector (merge norm + MLP)."""
        w, i = self.width, self.intermediate_size
        norm = w * (2 if self.norm == "layernorm" else 1)
        mlp = 3 * w * i + 2 * i + w if self.mlp == "swiglu" else 2 * w * i + i + w
        block = 2 * norm + (3 * w * w + 3 * w) + (w * w + w) + mlp
        d = self.out_dim
        if self.projector == "resampler":  # queries, kv projection, q/kv/post norms, attention in/out, output matrix
            projector = self.resampler_queries * d + w * d + 3 * d * (2 if self.norm == "layernorm" else 1) \
                + (3 * d * d + 3 * d) + (d * d + d) + d * d
        else:
            m = w * self.merge_size**2
            projector = norm + (m * m + m) + (m * d + d)
        return {"vision": self.patch_dim * w + self.depth * block, "projector": projector}


# Qwen2.5-VL's encoder (config.json "vision_config"); out_dim is set from the decoder
_QWEN25_VIT = dict(patch_size=14, temporal_patch_size=2, width=1280, depth=32, n_head=16, intermediate_size=3420,
                   mlp="swiglu", norm="rmsnorm", merge_size=2)
# A CPU-sized encoder for tests and demos: 8-pixel patches, 16-pixel merged tokens, small images
_TINY_VIT = dict(patch_size=8, temporal_patch_size=1, width=96, depth=3, n_head=4, intermediate_size=256,
                 mlp="swiglu", norm="rmsnorm", merge_size=2, min_pixels=16 * 16, max_pixels=160 * 160,
                 patch_norm=True, abs_pos="sincos")

# VLM name -> (decoder preset, decoder overrides, encoder settings)
VLM_PRESETS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "qwen2.5-vl-3b": ("qwen2.5-3b", {"max_seq_len": 128000, "rope_theta": 1e6}, _QWEN25_VIT),
    "qwen2.5-vl-7b": ("qwen2.5-7b", {"max_seq_len": 128000, "rope_theta": 1e6}, _QWEN25_VIT),
    "qwen-vl-tiny": ("qwen3-tiny", {"max_seq_len": 256}, _TINY_VIT),
    "qwen-vl-tiny-resampler": ("qwen3-tiny", {"max_seq_len": 256}, {**_TINY_VIT, "projector": "resampler",
                                                                      "resampler_queries": 16}),
}


def vlm_config(name: str, **decoder_overrides: Any) -> tuple[Config, VisionConfig]:
    """The decoder `Config` and `VisionConfig` of a VLM preset (the encoder's out_dim = the decoder's width)."""
    if name not in VLM_PRESETS:
        raise UserError(f"unknown VLM preset '{name}'.{closest(name, VLM_PRESETS)} Known: {', '.join(VLM_PRESETS)}")
    preset, overrides, vit = VLM_PRESETS[name]
    dec = Config.from_name(preset, **{**overrides, **decoder_overrides})
    vis = VisionConfig(**vit, out_dim=dec.n_embd)
    vis.validate()
    return dec, vis


def vlm_num_params(name: str) -> dict[str, int]:
    """Parameter counts of a VLM preset, by part, computed from the shapes (nothing is built)."""
    dec, vis = vlm_config(name)
    parts = {**vis.num_params(), "decoder": dec.num_params()}
    return {**parts, "total": sum(parts.values())}
