"""The image encoder: a ViT with 2D RoPE and pre-norm blocks, and its projector into the decoder — the 2x2 merge
(Qwen2-VL, the default) or the cross-attention resampler with learnable queries (Qwen-VL).

    enc = VisionEncoder(vision_config)
    feats = enc([preprocess(img, vision_config), ...])   # [sum of n_tokens, out_dim]: one row per <|image_pad|>

Built from the decoder's parts: `make_norm` (RMSNorm / LayerNorm through `ops.rms_norm`), `MLP` (SwiGLU / GELU
through `ops.swiglu` / `ops.gelu`) and `ops.norm_rope` for the rotary embedding. Attention is bidirectional
within one image (no causal mask), so it runs through `F.scaled_dot_product_attention`; images of the same
grid run as one batch.

2D RoPE (Qwen2-VL's vision rotary): each head's rotated pairs (i, i + D/2) split into two halves of D/4
frequencies — the first turns with the patch's row, the second with its column. Two switches, on in the tiny
preset: `patch_norm` (each patch's pixels normalised before the embedding, so thin dark strokes on a light page
are not swamped by the background) and `abs_pos="sincos"` (fixed 2D sine-cosine positions added to the patch
embeddings, as Qwen-VL's ViT adds absolute ones: RoPE alone tells how far apart two patches are, not where one is).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from gptqwen import ops
from gptqwen.model.mlp import MLP
from gptqwen.model.norms import make_norm
from gptqwen.vision.config import VisionConfig
from gptqwen.vision.image import ImageInput, grid_positions

# Without patch_norm the light background of a chart or a text line (+1.8 in every channel after CLIP normalisation)
# dominated the embeddings: features varied ~13% between word images, and the tiny ViT with a linear classifier on
# its features (trained together, words at a fixed place) stayed at chance on 50 words after 28,800 examples; with
# it, 89% after 9,600. The eps keeps a nearly flat patch (a background of uneven channels) from being blown up.
PATCH_NORM_EPS = 1e-2


def rope_2d(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and pre-signed sin tables [1, N, 1, head_dim] for (row, col) positions [N, 2], in `ops.norm_rope`'s layout."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim // 2, 2, dtype=torch.float32) / (head_dim // 2))
    angles = torch.cat([positions[:, :1] * inv_freq, positions[:, 1:] * inv_freq], dim=-1)  # [N, D/2]: rows | cols
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], -1)[None, :, None], torch.cat([-sin, sin], -1)[None, :, None]


class VisionBlock(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)); attention over all patches of the image."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.ln_1 = make_norm(cfg.norm, cfg.width, cfg.norm_eps)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.ln_2 = make_norm(cfg.norm, cfg.width, cfg.norm_eps)
        self.mlp = MLP(cfg.mlp, cfg.width, cfg.intermediate_size, bias=True)

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.n_head, C // self.n_head)
        q = ops.norm_rope(qkv[:, :, 0], cos, sin)
        k = ops.norm_rope(qkv[:, :, 1], cos, sin)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2))
        return self.proj(y.transpose(1, 2).reshape(B, N, C))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))


class Projector(nn.Module):
    """Qwen2-VL's PatchMerger: norm each patch, concatenate each 2x2 group, MLP (GELU) into the decoder width."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.group = cfg.merge_size**2
        hidden = cfg.width * self.group
        self.ln = make_norm(cfg.norm, cfg.width, cfg.norm_eps)
        self.fc = nn.Linear(hidden, hidden)
        self.proj = nn.Linear(hidden, cfg.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        x = self.ln(x).reshape(B, N // self.group, C * self.group)  # groups are consecutive (image.patchify)
        return self.proj(F.gelu(self.fc(x)))


def sincos_2d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed 2D sine-cosine embeddings [N, dim] of (row, col) positions [N, 2] (half the channels per axis)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / max(1, dim // 4))
    parts = [torch.cat([(positions[:, i:i + 1] * omega).sin(), (positions[:, i:i + 1] * omega).cos()], -1) for i in (0, 1)]
    return torch.cat(parts, -1)


class Resampler(nn.Module):
    """Qwen-VL's projector: a fixed number of learnable queries cross-attend to the image's patches (one layer),
    so every image costs `resampler_queries` decoder tokens whatever its size. Queries and keys carry 2D
    sine-cosine positions, the keys' scaled onto the queries' square grid."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        d, self.n = cfg.out_dim, cfg.resampler_queries
        self.side, self.n_head = math.isqrt(self.n), max(1, d // 128)
        self.query = nn.Parameter(torch.empty(self.n, d))
        self.kv = nn.Linear(cfg.width, d, bias=False)
        self.ln_q, self.ln_kv, self.ln_post = (make_norm(cfg.norm, d, cfg.norm_eps) for _ in range(3))
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], merge_size: int) -> torch.Tensor:
        B, N, _ = x.shape
        d, h = self.query.shape[1], self.n_head
        kv = self.ln_kv(self.kv(x))
        pos = grid_positions(grid, merge_size).float() * torch.tensor([self.side / grid[0], self.side / grid[1]])
        q_pos = torch.stack(torch.meshgrid(torch.arange(self.side), torch.arange(self.side), indexing="ij"), -1).view(-1, 2)
        w, b = self.qkv.weight.split(d), self.qkv.bias.split(d)
        q = F.linear(self.ln_q(self.query) + sincos_2d(q_pos.float(), d).to(x), w[0], b[0]).expand(B, -1, -1)
        k = F.linear(kv + sincos_2d(pos, d).to(x), w[1], b[1])
        v = F.linear(kv, w[2], b[2])
        heads = [t.reshape(B, -1, h, d // h).transpose(1, 2) for t in (q, k, v)]
        y = F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(B, self.n, d)
        return self.proj(self.ln_post(self.out(y)))


class VisionEncoder(nn.Module):
    """Patches of several images -> one feature row per merged token, in image order."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.width, bias=False)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = Resampler(cfg) if cfg.projector == "resampler" else Projector(cfg)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.merger, Resampler):
            nn.init.normal_(self.merger.query, 0.0, 0.02)

    def encode_batch(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[B, N, patch_dim] of images with one grid -> [B, N / merge^2, out_dim]."""
        cfg = self.config
        positions = grid_positions(grid, cfg.merge_size).float()
        cos, sin = rope_2d(positions, cfg.head_dim, cfg.rope_theta)
        patches = patches.to(self.patch_embed.weight.dtype)
        if cfg.patch_norm:  # a flat background is ~0, an edge or stroke is unit-sized (eps: flat stays flat)
            patches = F.layer_norm(patches, (cfg.patch_dim,), eps=PATCH_NORM_EPS)
        x = self.patch_embed(patches)
        if cfg.abs_pos == "sincos":  # where a patch is, not only how far apart two are: left/right, bar heights
            x = x + sincos_2d(positions, cfg.width).to(x)
        cos, sin = cos.to(x), sin.to(x)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.merger(x, grid, cfg.merge_size) if cfg.projector == "resampler" else self.merger(x)

    def forward(self, images: list[ImageInput]) -> torch.Tensor:
        device = self.patch_embed.weight.device
        by_grid: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            by_grid[im.grid].append(i)
        out: list[torch.Tensor | None] = [None] * len(images)
        for grid, idx in by_grid.items():
            feats = self.encode_batch(torch.stack([images[i].patches for i in idx]).to(device), grid)
            for j, i in enumerate(idx):
                out[i] = feats[j]
        return torch.cat(out)  # type: ignore[arg-type]
