"""Weight quantisation for inference: `quantize(model, "q8_0" | "q4_1")` swaps `nn.Linear`s in place for
`QuantLinear`s, whose weights are held in llama.cpp's block formats (`ops/quant.py` describes them and runs
the products).

  * q8_0 — 1.06 bytes per weight (fp32: 4); q4_1 — 0.63 bytes per weight. The LM head stays q8_0 under
    q4_1, as in llama.cpp's files, because its errors go straight into the logits.
Quantising weights that came from a GGUF file of the same format gives back the file's own blocks (the same
scales and values; q4_1's nibbles in the kernels' order), tested on SmolLM2's Q4_1 layers and Q8_0 head, so
`--quant q4_1` on that model runs exactly its weights.

Batch-1 decoding is bound by reading the weights; the C products read the blocks directly, so a decode step
moves ~4x (q8_0) or ~6x (q4_1) fewer bytes than float32, and multiply them with float32 activations: the
result is a float32 product with exactly the dequantised weights (rounding the activations to int8 too,
llama.cpp's way, flipped near-tied answers of SmolLM2). A batched decode step (from 4 rows) is bound by the
arithmetic instead: there the product dequantises tiles of the weight to float32 once per call and runs a
register-tiled float product over all rows (`csrc/tiles.h`). Prefills of more than `ops.quant.KERNEL_ROWS`
rows dequantise the whole weight once and use the float GEMM. On GPUs, or without a C compiler, layers
dequantise on every call: less memory, no speed-up.
Layers whose input width is not a multiple of 32, and MoE experts (plain tensors), stay in float.
"""

from __future__ import annotations

import torch
from torch import nn

from gptqwen.ops.quant import BLOCK, blocks_usable, check_format, dequantize, quant_linear, quantize_blocks


class QuantLinear(nn.Module):
    """`y = x @ W.T + b` with W held in q8_0 or q4_1 blocks (see the module docstring)."""

    def __init__(self, linear: nn.Linear, fmt: str) -> None:
        super().__init__()
        if linear.in_features % BLOCK:
            raise ValueError(f"in_features {linear.in_features} is not a multiple of {BLOCK}")
        self.fmt, self.in_features, self.out_features = fmt, linear.in_features, linear.out_features
        for name, t in quantize_blocks(linear.weight, fmt).items():
            self.register_buffer(name, t.to(linear.weight.device).contiguous())
        if fmt == "q8_0":
            self.m = None
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def kernels_apply(self) -> bool:
        """Whether the C products can read this layer's blocks (CPU, scales not cast by `model.to(...)`)."""
        return blocks_usable(self.qs, self.d)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [out, in]."""
        return dequantize(self.qs, self.d, self.m, self.fmt, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (a decode step calls this ~120 times: buffers are read from the dict, not through nn.Module.__getattr__)
        b = self._buffers
        return quant_linear(x, b["qs"], b["d"], b.get("m"), self.fmt, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.fmt}"


def quantize(model: nn.Module, fmt: str = "q8_0", skip: tuple[str, ...] = (), head_fmt: str = "q8_0") -> nn.Module:
    """Replace the `nn.Linear`s of `model` (names not containing a `skip` entry) by `QuantLinear`s in `fmt`;
    `lm_head` gets `head_fmt` when `fmt` is coarser. Returns the model."""
    check_format(fmt)
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or any(s in name for s in skip) or module.in_features % BLOCK:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer_fmt = head_fmt if child == "lm_head" and fmt == "q4_1" else fmt
        setattr(parent, child, QuantLinear(module, layer_fmt))
    return model
