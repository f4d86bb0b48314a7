"""A whole decode step in one C call for pre-norm models on CPU (`ops.decode_step`, gptqwen/csrc/decode.c).

    from gptqwen.infer.native import NativeDecoder, why_not
    dec = NativeDecoder.build(model)    # None when the model or the machine does not qualify: why_not(model) says why
    logits = dec.step(tokens, positions, starts, cache)   # [B, V]; K/V written at slot cache.length, which advances

`Engine` takes this path for every decode step it can (prefill stays in PyTorch, whose GEMMs are faster over
many rows); `Engine(..., native=False)` or `GPTQWEN_NO_KERNELS=1` turns it off. Why it exists: at batch 1 a
PyTorch decode step of SmolLM2-135M is ~400 small ops (norms, RoPE, cache writes, SDPA, residuals, the
quantised products' Python wrappers) costing ~8 ms of dispatch on top of ~13 ms of arithmetic; in C the
overhead is one ctypes call. The C step computes exactly what `Transformer.forward` does with a cache (the
tests compare their logits at every step, float32 and q8_0/q4_1 weights, padded batches included), so it is
a faster route through the same model, not a second model: the weights, the KV cache and the RoPE tables are
the PyTorch model's own tensors, read in place. This module decides which models qualify and hands their
tensors to `ops.decode` (`DecodeWeights`), which owns the C structs.

It covers the dense pre-norm layouts with float32 or `QuantLinear` weights: Llama, Qwen2, Qwen2.5, Qwen3
(RMSNorm, RoPE incl. YaRN tables, GQA, QKV bias, QK-norm, SwiGLU) and GPT-2 (LayerNorm, learned positions,
GELU, biases). Everything else — GPT-1's post-norm, GPT-3's banded layers, Qwen v1's logn/NTK, MoE, bf16,
LoRA-wrapped or hooked layers, GPUs — decodes through PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn

from gptqwen import ops
from gptqwen.errors import UserError
from gptqwen.infer.quant import QuantLinear


def _mlp_linears(mlp: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the MLP's input projection, its output projection): gate_up/down (SwiGLU) or fc/proj (GELU)."""
    return (mlp.gate_up, mlp.down) if mlp.kind == "swiglu" else (mlp.fc, mlp.proj)


def _norm_ok(norm: nn.Module) -> bool:
    return _f32(norm.weight) and _f32(getattr(norm, "bias", None))


def _f32(t: torch.Tensor | None) -> bool:
    return t is None or (t.dtype == torch.float32 and t.is_cpu and t.is_contiguous())


def _linear_ok(m: nn.Module) -> bool:
    if m._forward_hooks or m._forward_pre_hooks:
        return False
    if type(m) is nn.Linear:
        return _f32(m.weight) and _f32(m.bias)
    if type(m) is QuantLinear:
        return m.kernels_apply() and _f32(m.bias)
    return False


def why_not(model: nn.Module) -> str | None:
    """None when `NativeDecoder.build(model)` can take the model, else the reason it cannot."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "blocks") or not hasattr(model, "rotary"):
        return "not a gptqwen Transformer"
    if model.training:
        return "the model is in training mode"
    if not cfg.pre_norm:
        return "GPT-1's post-norm layout decodes through PyTorch"
    if cfg.n_experts or cfg.local_layers != "none" or cfg.logn_attn or cfg.dynamic_ntk:
        return "MoE, banded attention and Qwen v1's logn/NTK decode through PyTorch"
    if cfg.dca is not None:
        return "Dual Chunk Attention (model/dca.py) decodes through PyTorch"
    if model.wte.weight.dtype != torch.float32 or not model.wte.weight.is_cpu:
        return "the native step runs float32 activations on CPU"
    for block in model.blocks:
        a = block.attn
        if not all(_linear_ok(m) for m in (a.qkv, a.proj, *_mlp_linears(block.mlp))):
            return "a layer is neither a float32 nn.Linear nor a QuantLinear (LoRA, hooks, bf16?)"
        norms = [block.ln_1, block.ln_2] + ([a.q_norm, a.k_norm] if a.q_norm is not None else [])
        if not all(_norm_ok(n) for n in norms):
            return "a norm weight is not float32"
    wpe = model.wpe.weight if model.wpe is not None else None
    if not _linear_ok(model.lm_head) or not _norm_ok(model.ln_f) or not _f32(wpe):
        return "the LM head or final norm is not float32 / QuantLinear"
    if not ops.available():
        return "the C kernels are not available here (no C compiler, or GPTQWEN_NO_KERNELS is set)"
    return None


class NativeDecoder:
    """The C decode step bound to one model's tensors (see the module docstring). Build it right before use:
    it reads the model's weights in place, so it must not outlive changes to them."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.cfg = model, model.config
        cfg = self.cfg

        def lin(m: nn.Module) -> ops.LinearWeights:
            if type(m) is QuantLinear:
                b = m._buffers
                return ops.LinearWeights(m.fmt, m.out_features, m.in_features, b["qs"], b["d"], b.get("m"), m.bias)
            return ops.LinearWeights("f32", m.out_features, m.in_features, m.weight, bias=m.bias)

        def bias(norm: nn.Module) -> torch.Tensor | None:  # LayerNorm's; RMSNorm has none
            return getattr(norm, "bias", None)

        layers = []
        for block in model.blocks:
            a = block.attn
            up, down = _mlp_linears(block.mlp)
            qk = a.q_norm is not None
            layers.append(ops.LayerWeights(lin(a.qkv), lin(a.proj), lin(up), lin(down), block.ln_1.weight,
                                           block.ln_2.weight, bias(block.ln_1), bias(block.ln_2),
                                           a.q_norm.weight if qk else None, a.k_norm.weight if qk else None))
        gelu = cfg.mlp == "gelu"
        up = _mlp_linears(model.blocks[0].mlp)[0]
        weights = ops.DecodeWeights(
            cfg.n_head, cfg.n_kv_head, cfg.head_dim, up.out_features if gelu else up.out_features // 2, gelu,
            model.ln_f.eps, model.blocks[0].attn.q_norm.eps if cfg.qk_norm else 0.0, model.wte.weight,
            model.wpe.weight if model.wpe is not None else None, model.ln_f.weight, bias(model.ln_f),
            lin(model.lm_head), layers)
        self._packed = ops.PackedModel(weights)
        self._logits: torch.Tensor | None = None

    @classmethod
    def build(cls, model: nn.Module) -> NativeDecoder | None:
        return cls(model) if why_not(model) is None else None

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, starts: torch.Tensor, cache) -> torch.Tensor:
        """Logits [B, V] after feeding tokens[b] at position positions[b]; row b attends to cache slots
        starts[b] .. cache.length (its left padding ends at starts[b]). Writes the K/V and advances the cache.
        The logits live in a buffer the next step overwrites (no allocation per step): copy them to keep them."""
        B, fill = tokens.shape[0], cache.length
        if fill >= cache.max_len:
            raise UserError(f"sequence of {fill + 1} tokens does not fit the KV cache of {cache.max_len}; "
                            "shorten the prompt or lower max_new_tokens")
        if cache.k.dtype != torch.float32 or cache.batch_size != B or not cache.k.is_contiguous():
            raise ValueError("the native decode step needs a contiguous float32 KV cache of the batch's size")
        tokens, positions, starts = (t.to(torch.int64).contiguous() for t in (tokens, positions, starts))
        # the C code indexes tables with these: out-of-range values must never reach it
        if not (0 <= int(tokens.min()) and int(tokens.max()) < self.cfg.vocab_size
                and 0 <= int(positions.min()) and int(positions.max()) < cache.max_len
                and 0 <= int(starts.min()) and int(starts.max()) <= fill):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}), positions in [0, {cache.max_len}) "
                             f"and starts in [0, {fill}]")
        cos = sin = None
        if self.model.rotary is not None:  # views of the full tables [1, L, 1, D]
            cos, sin = self.model.rotary(None, cache.max_len, tokens.device)
        if self._logits is None or self._logits.shape[0] != B:
            self._logits = torch.empty(B, self.cfg.vocab_size, dtype=torch.float32, device=cache.k.device)
        ops.decode_step(self._packed, tokens, positions, starts, fill, cos, sin, cache.k, cache.v, self._logits)
        cache.length = fill + 1
        return self._logits
