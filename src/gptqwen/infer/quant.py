"""Int8 quantisation for inference: `quantize_int8(model)` swaps every `nn.Linear` in place.

Weights: int8 with one scale per output row (symmetric, absmax / 127) — a quarter of fp32's bytes, which is
what batch-1 decode is bound by. The matmul depends on where it runs:
  * CPU, fp32 activations: fbgemm's dynamic int8 linear (`quantized::linear_dynamic`, activations quantised
    per call, int32 accumulation) — the fast int8 GEMM PyTorch ships for x86;
  * elsewhere (CUDA, bf16): weight-only, `torch._weight_int8pack_mm` (reads the int8 weights directly), or
    dequantise-then-matmul when no kernel exists.
The dynamic path quantises each activation row with one scale, and a few outlier channels (large in every
token of a real LM, e.g. SmolLM2) would crush the rest to a handful of levels. `quantize_int8` therefore first
runs the model on a short calibration sequence and migrates the outliers into the weights (SmoothQuant,
arXiv:2211.10438): per input channel j, s_j = max|x_j|^a / max|W_j|^(1-a), W' = W * s, x' = x / s.
MoE expert weights are plain tensors, not Linears, and stay in float. `bench/decode.py --int8` measures it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """`y = x @ (q * scale).T + b` with `q` int8 [out, in] and one scale per output row."""

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor | None = None) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        if smooth is not None:  # SmoothQuant: the weight takes the channel scales, the input is divided by them
            w = w * smooth[None, :].to(w)
        self.register_buffer("inv_smooth", None if smooth is None else (1.0 / smooth).to(linear.weight.dtype))
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
                self._fbgemm = torch.ops.quantized.linear_prepack(qw, None)  # bias added after the row rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_smooth is not None:
            x = x * self.inv_smooth.to(x.dtype)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self._fbgemm is not None and x.device.type == "cpu" and x.dtype == torch.float32:
            # fbgemm quantises the whole input with one scale; rows are scaled to the same range first so every
            # token keeps its own resolution (a prefill's first token has activations 100x the others').
            # reduce_range: 7-bit activations, so AVX2's 16-bit intermediate sums cannot overflow
            if x2.shape[0] > 1:
                r = x2.abs().amax(1, keepdim=True).clamp_(min=1e-12)
                y = torch.ops.quantized.linear_dynamic((x2 / r).contiguous(), self._fbgemm, True) * r
            else:
                y = torch.ops.quantized.linear_dynamic(x2.contiguous(), self._fbgemm, True)
            if self.bias is not None:
                y = y + self.bias
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


def _input_absmax(model: nn.Module, linears: dict[str, nn.Linear], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| of every linear in `linears` over one forward of `ids`."""
    stats: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_m, args):
            a = args[0].detach().flatten(0, -2).abs().amax(0).float()
            stats[name] = torch.maximum(stats[name], a) if name in stats else a
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return stats


def quantize_int8(model: nn.Module, skip: tuple[str, ...] = (), calibration: torch.Tensor | None = None,
                  alpha: float = 0.3) -> nn.Module:
    """Replace every `nn.Linear` of `model` (names not containing a `skip` entry) by an `Int8Linear`.

    For a gptqwen `Transformer` the activation outliers are measured on `calibration` ([B, T] token ids;
    default 64 fixed pseudo-random ids, enough to find channels that are large for every token) and smoothed
    with strength `alpha` (0 disables it).
    """
    targets = {name: m for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not any(s in name for s in skip)}
    smooth: dict[str, torch.Tensor] = {}
    cfg = getattr(model, "config", None)
    if alpha > 0 and cfg is not None and hasattr(cfg, "vocab_size"):
        device = next(model.parameters()).device
        if calibration is None:
            g = torch.Generator().manual_seed(0)
            calibration = torch.randint(0, cfg.vocab_size, (1, min(64, cfg.max_seq_len)), generator=g)
        for name, amax in _input_absmax(model, targets, calibration.to(device)).items():
            wmax = targets[name].weight.detach().abs().amax(0).float()
            smooth[name] = (amax.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
    for name, linear in targets.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(linear, smooth.get(name)))
    return model
