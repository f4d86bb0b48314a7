"""The fused operations of the model and the decode loop, each a public function beside its plain PyTorch
reference (`<op>_reference`, same file): the function runs the C pass (`csrc/`) where it applies — the
library built here, CPU, float32, a layout it reads, `GPTQWEN_NO_KERNELS` unset — and the reference
otherwise (GPUs, bf16, no C compiler). The training passes are torch custom ops (`torch.ops.gptqwen.*`, with
fake and autograd registrations), so torch.compile keeps them in its graph.

    from gptqwen import ops
    y = ops.rms_norm(x, weight, eps)            # norms.py
    y = ops.gelu(x); y = ops.swiglu(h)          # activations.py
    qk = ops.norm_rope(qk, cos, sin, w, eps)    # rope.py: QK-norm + RoPE
    o = ops.causal_attention(q, k, v)           # attention.py
    loss = ops.linear_cross_entropy(h, w, t)    # loss.py: LM head + cross-entropy, chunked
    y = ops.quant_linear(x, qs, d, m, "q4_1")   # quant.py: block-quantised products and formats
    ops.decode_step(packed, ...)                # decode.py: a whole decode step in one C call

This package is the only one that talks to the C library (`_clib.py`: build, load, ctypes declarations,
struct mirrors, format codes).
"""

from gptqwen.ops._clib import available
from gptqwen.ops.activations import gelu, gelu_reference, swiglu, swiglu_reference
from gptqwen.ops.attention import causal_attention, causal_attention_reference
from gptqwen.ops.decode import DecodeWeights, LayerWeights, LinearWeights, PackedModel, decode_step
from gptqwen.ops.loss import fuses_linear_cross_entropy, linear_cross_entropy, linear_cross_entropy_reference
from gptqwen.ops.norms import rms_norm, rms_norm_reference
from gptqwen.ops.quant import quant_linear, quant_linear_reference
from gptqwen.ops.rope import norm_rope, norm_rope_reference

__all__ = [
    "available", "gelu", "gelu_reference", "swiglu", "swiglu_reference", "causal_attention",
    "causal_attention_reference", "DecodeWeights", "LayerWeights", "LinearWeights", "PackedModel", "decode_step",
    "fuses_linear_cross_entropy", "linear_cross_entropy", "linear_cross_entropy_reference", "rms_norm",
    "rms_norm_reference", "quant_linear", "quant_linear_reference", "norm_rope", "norm_rope_reference",
]
