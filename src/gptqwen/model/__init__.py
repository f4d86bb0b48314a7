"""The decoder model: `Transformer(cfg)`, its static `KVCache`, and the MoE balancing losses.

Submodules: attention (MHA/GQA, band, KV cache), mlp (GELU/SwiGLU), moe (experts, aux losses),
rope (RoPE, YaRN, NTK, logn), norms, transformer (blocks and the full model).
"""

from gptqwen.model.attention import KVCache
from gptqwen.model.moe import global_load_balancing_loss, load_balancing_loss
from gptqwen.model.transformer import ModelOutput, Transformer

__all__ = ["Transformer", "KVCache", "ModelOutput", "load_balancing_loss", "global_load_balancing_loss"]
