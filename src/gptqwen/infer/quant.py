"""Weight quantisation for inference: `quantize(model, "q8_0" | "q4_1")` swaps `nn.Linear`s in place.

Formats are llama.cpp's block formats (32 consecutive weights of a row share their scale):
  * q8_0 — w = d * q, q int8, d fp16: 1.06 bytes per weight (fp32: 4);
  * q4_1 — w = d * q + m, q in 0..15, d and m fp16: 0.63 bytes per weight. The LM head stays q8_0, as in
    llama.cpp's files, because its errors go straight into the logits.
Quantising weights that came from a GGUF file of the same format gives back the file's own blocks (the same
scales and values; q4_1's nibbles in the kernels' order), tested on SmolLM2's Q4_1 layers and Q8_0 head, so
`--quant q4_1` on that model runs exactly its weights.

Batch-1 decoding is bound by reading the weights; the C kernels (`gptqwen/csrc/products.c`) read the blocks
directly, so a decode step moves ~4x (q8_0) or ~6x (q4_1) fewer bytes than float32, and multiply them with
float32 activations: the result is a float32 product with exactly the dequantised weights (rounding the
activations to int8 too, llama.cpp's way, flipped near-tied answers of SmolLM2). Inputs of more than
`KERNEL_ROWS` rows (prefills) dequantise the weight once and use the float GEMM, which is faster there.
On GPUs, or without a C compiler, layers dequantise on every call: less memory, no speed-up.
Layers whose input width is not a multiple of 32, and MoE experts (plain tensors), stay in float.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptqwen.errors import UserError
from gptqwen import kernels

FORMATS = ("q8_0", "q4_1")
BLOCK = 32
KERNEL_FORMATS = {"f32": 0, "q8_0": 1, "q4_1": 2}  # gq_matmul's fmt codes (csrc/common.h)
KERNEL_ROWS = 32  # longer inputs (prefills) dequantise the weight once and use the float GEMM: faster there


def quantize_blocks(w: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """Blocks of a float [N, K] matrix (K % 32 == 0) as llama.cpp computes them: {"qs", "d"[, "m"]}."""
    n, k = w.shape
    wb = w.detach().float().reshape(n, k // BLOCK, BLOCK)
    if fmt == "q8_0":
        d = wb.abs().amax(-1) / 127.0
        inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
        q = torch.round(wb * inv[..., None]).clamp(-127, 127).to(torch.int8)
        return {"qs": q.reshape(n, k), "d": d.half()}
    if fmt == "q4_1":
        lo, hi = wb.amin(-1), wb.amax(-1)
        d = (hi - lo) / 15.0
        inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
        q = torch.floor((wb - lo[..., None]) * inv[..., None] + 0.5).clamp(0, 15).to(torch.uint8)
        # the kernels' nibble order (csrc/products.c): value e = 8i + 4j + l goes to word l, nibble 2i + j
        nib = q.reshape(n, -1, 4, 2, 4).permute(0, 1, 4, 2, 3).reshape(n, -1, 4, 8)
        packed = nib[..., 0::2] | (nib[..., 1::2] << 4)
        return {"qs": packed.reshape(n, k // 2), "d": d.half(), "m": lo.half()}
    raise UserError(f"unknown quantisation format '{fmt}'; choose one of {', '.join(FORMATS)}")


def dequantize_blocks(qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, fmt: str,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float [N, K] matrix the blocks stand for (PyTorch ops; works on any device)."""
    n = qs.shape[0]
    if fmt == "q8_0":
        q = qs.reshape(n, -1, BLOCK).float()
    else:
        b = qs.reshape(n, -1, 4, 4)  # [block, word, byte] -> nibbles [block, word, 8] -> values 8i + 4j + l
        nib = torch.stack([b & 0x0F, b >> 4], dim=-1).reshape(n, -1, 4, 4, 2)
        q = nib.permute(0, 1, 3, 4, 2).reshape(n, -1, BLOCK).float()
    w = q * d.float()[..., None]
    if m is not None:
        w = w + m.float()[..., None]
    return w.reshape(n, -1).to(dtype)


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

    def _lib(self):
        """The C kernels when they apply to this layer: CPU blocks with fp16 scales (not cast by model.to(...))."""
        b = self._buffers
        return kernels.library() if b["qs"].is_cpu and b["d"].dtype == torch.float16 else None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [out, in] (the C dequantiser where it applies, else PyTorch ops)."""
        lib = self._lib()
        if lib is None:
            return dequantize_blocks(self.qs, self.d, self.m, self.fmt, dtype)
        w = torch.empty(self.out_features, self.in_features)
        lib.gq_dequantize(int(self.fmt == "q4_1"), self.qs.data_ptr(), self.d.data_ptr(),
                          None if self.m is None else self.m.data_ptr(), self.out_features, self.in_features,
                          w.data_ptr(), torch.get_num_threads())
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        rows = x2.shape[0]
        # (a decode step calls this ~120 times: buffers are read from the dict, not through nn.Module.__getattr__)
        b = self._buffers
        lib = self._lib() if rows <= KERNEL_ROWS and x.dtype == torch.float32 and x.is_cpu else None
        if lib is not None:
            x2 = x2.contiguous()
            y = torch.empty(rows, self.out_features)
            lib.gq_matmul(KERNEL_FORMATS[self.fmt], x2.data_ptr(), rows, self.in_features, b["qs"].data_ptr(),
                          b["d"].data_ptr(), None if b.get("m") is None else b["m"].data_ptr(), self.out_features,
                          y.data_ptr(), torch.get_num_threads(), 1)
        else:
            y = F.linear(x2, self.dequantize(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.fmt}"


def quantize(model: nn.Module, fmt: str = "q8_0", skip: tuple[str, ...] = (), head_fmt: str = "q8_0") -> nn.Module:
    """Replace the `nn.Linear`s of `model` (names not containing a `skip` entry) by `QuantLinear`s in `fmt`;
    `lm_head` gets `head_fmt` when `fmt` is coarser. Returns the model."""
    if fmt not in FORMATS:
        raise UserError(f"unknown quantisation format '{fmt}'; choose one of {', '.join(FORMATS)}")
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or any(s in name for s in skip) or module.in_features % BLOCK:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer_fmt = head_fmt if child == "lm_head" and fmt == "q4_1" else fmt
        setattr(parent, child, QuantLinear(module, layer_fmt))
    return model
