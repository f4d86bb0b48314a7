"""Int8 quantisation for inference: `quantize_int8(model)` swaps every `nn.Linear` in place.

Weights: int8 with one scale per output row (symmetric, absmax / 127) — a quarter of fp32's bytes, which is
what batch-1 decode is bound by. The matmul depends on where it runs:
  * CPU, fp32 activations: fbgemm's dynamic int8 linear (`quantized::linear_dynamic`, activations quantised
    per call, int32 accumulation) — the fast int8 GEMM PyTorch ships for x86;
  * elsewhere (CUDA, bf16): weight-only, `torch._weight_int8pack_mm` (reads the int8 weights directly), or
    dequantise-then-matmul when no kernel exists.
MoE expert weights are plain tensors, not Linears, and stay in float. `bench/decode.py --int8` measures it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """`y = x @ (q * scale).T + b` with `q` int8 [out, in] and one scale per output row."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        dtype = linear.weight.dtype
        self.register_buffer("scale", scale.to(dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self._packed = hasattr(torch, "_weight_int8pack_mm")
        self._fbgemm = None
        if w.device.type == "cpu" and dtype == torch.float32 and "fbgemm" in torch.backends.quantized.supported_engines:
            with warnings.catch_warnings():  # torch.ao's deprecation notice; the fbgemm kernels stay
                warnings.simplefilter("ignore")
                zero = torch.zeros_like(scale, dtype=torch.long)
                qw = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
                self._fbgemm = torch.ops.quantized.linear_prepack(qw, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self._fbgemm is not None and x.device.type == "cpu" and x.dtype == torch.float32:
            # reduce_range: 7-bit activations, so AVX2's 16-bit intermediate sums cannot overflow
            y = torch.ops.quantized.linear_dynamic(x2.contiguous(), self._fbgemm, True)
            return y.reshape(*shape[:-1], self.out_features)
        if self._packed:
            try:
                y = torch._weight_int8pack_mm(x2, self.qweight, self.scale.to(x.dtype))
            except RuntimeError:  # no kernel for this device/dtype: fall back for good
                self._packed = False
        if not self._packed:
            y = F.linear(x2, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: nn.Module, skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace every `nn.Linear` of `model` (names not containing a `skip` entry) by an `Int8Linear`."""
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not any(s in name for s in skip)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(linear))
    return model
