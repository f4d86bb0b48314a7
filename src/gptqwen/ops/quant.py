"""Block-quantised weights (llama.cpp's q8_0 and q4_1) and their products: `quant_linear` (the C product on fp32
CPU, `csrc/products.c`) beside `quant_linear_reference` (dequantise with PyTorch ops, then `F.linear`).

    blocks = quantize_blocks(w [N, K], "q4_1")             # {"qs", "d", "m"}: the stored format
    y = quant_linear(x, blocks["qs"], blocks["d"], blocks["m"], "q4_1", bias)

Formats (32 consecutive weights of a row share their scale; K % 32 == 0):
  * q8_0 — w = d * q, q int8, d fp16: 1.06 bytes per weight (fp32: 4);
  * q4_1 — w = d * q + m, q in 0..15, d and m fp16: 0.63 bytes per weight; a block's 16 bytes are four
    little-endian words, value e in word e % 4 at nibble 2 (e / 8) + (e % 8) / 4 (the order AVX2 decodes
    with one shift per lane; csrc/products.c).
The C product multiplies each decoded block with float32 activations, so the result is a float32 product with
exactly the dequantised weights, up to summation order. From 4 rows (a batched decode step, a short prefill) it
dequantises tiles of W to float32 and runs a register-tiled product over all rows (AVX-512 where the CPU has it);
inputs of more than `KERNEL_ROWS` rows (long prefills) dequantise the whole weight once and use torch's float
GEMM, which is faster from there (measured: bench/batch_step.py). `float_matmul` is the same C product
on float32 weights (the decode step's float path), for tests and benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptqwen.errors import UserError
from gptqwen.ops import _clib

FORMATS = ("q8_0", "q4_1")
BLOCK = 32
KERNEL_ROWS = 64  # longer inputs (prefills) dequantise the weight once and use the float GEMM: faster there


def check_format(fmt: str) -> None:
    """Raise a UserError naming the choices when `fmt` is not a block format."""
    if fmt not in FORMATS:
        raise UserError(f"unknown quantisation format '{fmt}'; choose one of {', '.join(FORMATS)}")


def quantize_blocks(w: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """Blocks of a float [N, K] matrix (K % 32 == 0) as llama.cpp computes them: {"qs", "d"[, "m"]}."""
    check_format(fmt)
    n, k = w.shape
    wb = w.detach().float().reshape(n, k // BLOCK, BLOCK)
    if fmt == "q8_0":
        d = wb.abs().amax(-1) / 127.0
        inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
        q = torch.round(wb * inv[..., None]).clamp(-127, 127).to(torch.int8)
        return {"qs": q.reshape(n, k), "d": d.half()}
    lo, hi = wb.amin(-1), wb.amax(-1)
    d = (hi - lo) / 15.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.floor((wb - lo[..., None]) * inv[..., None] + 0.5).clamp(0, 15).to(torch.uint8)
    # the kernels' nibble order: value e = 8i + 4j + l goes to word l, nibble 2i + j
    nib = q.reshape(n, -1, 4, 2, 4).permute(0, 1, 4, 2, 3).reshape(n, -1, 4, 8)
    packed = nib[..., 0::2] | (nib[..., 1::2] << 4)
    return {"qs": packed.reshape(n, k // 2), "d": d.half(), "m": lo.half()}


def dequantize_blocks(qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, fmt: str,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float [N, K] matrix the blocks stand for (PyTorch ops; any device): the reference of `dequantize`."""
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


def blocks_usable(qs: torch.Tensor, d: torch.Tensor) -> bool:
    """Whether the C kernels can read these blocks: built here, on the CPU, scales still fp16 bits (not cast by
    `model.to(...)`), contiguous."""
    return (_clib.available() and qs.is_cpu and d.dtype == torch.float16 and qs.is_contiguous()
            and d.is_contiguous())


def dequantize(qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, fmt: str,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float [N, K] matrix the blocks stand for (the C dequantiser where it applies)."""
    if not blocks_usable(qs, d):
        return dequantize_blocks(qs, d, m, fmt, dtype)
    n, k = qs.shape[0], d.shape[1] * BLOCK
    w = torch.empty(n, k, dtype=torch.float32, device=qs.device)
    _clib.library().gq_dequantize(int(fmt == "q4_1"), qs.data_ptr(), d.data_ptr(), _clib.ptr(m), n, k,
                                  w.data_ptr(), _clib.threads())
    return w.to(dtype)


def _c_matmul(fmt: str, x: torch.Tensor, w: torch.Tensor, d: torch.Tensor | None, m: torch.Tensor | None,
              n: int, simd: bool | int, threads: int | None) -> torch.Tensor:
    """y [M, n] = x [M, K] @ W.T by gq_matmul, W float32 [n, K] or blocks (qs = w, scales d, mins m)."""
    x = x.contiguous()
    y = torch.empty(x.shape[0], n, dtype=torch.float32, device=x.device)
    code = _clib.library().gq_matmul(_clib.FORMAT_CODES[fmt], x.data_ptr(), x.shape[0], x.shape[1], w.data_ptr(),
                                     _clib.ptr(d), _clib.ptr(m), n, y.data_ptr(),
                                     threads or _clib.threads(), int(simd))
    _clib.check(code, "gq_matmul")
    return y


def quant_linear_reference(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, fmt: str,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W.T + bias with W the dequantised blocks, in x's dtype."""
    y = F.linear(x, dequantize(qs, d, m, fmt, x.dtype))
    return y if bias is None else y + bias.to(y.dtype)


def quant_linear(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, fmt: str,
                 bias: torch.Tensor | None = None, simd: bool | int = True, threads: int | None = None
                 ) -> torch.Tensor:
    """x [..., K] @ W.T + bias for W [N, K] held in `fmt` blocks. `simd=False` forces the portable C loop,
    `simd=2` AVX2 where AVX-512 would be taken, and `threads` overrides torch's thread count (tests compare them)."""
    rows = x.numel() // x.shape[-1]
    if not (rows <= KERNEL_ROWS and x.dtype == torch.float32 and x.is_cpu and blocks_usable(qs, d)):
        return quant_linear_reference(x, qs, d, m, fmt, bias)
    y = _c_matmul(fmt, x.reshape(rows, x.shape[-1]), qs, d, m, qs.shape[0], simd, threads)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], qs.shape[0])


def float_matmul(x: torch.Tensor, w: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """x [M, K] @ w [N, K].T by the C product on float32 weights (what the decode step runs); needs the kernels."""
    if not _clib.usable(x, w):
        raise RuntimeError("float_matmul needs the C kernels and float32 CPU tensors")
    return _c_matmul("f32", x, w.contiguous(), None, None, w.shape[0], True, threads)
