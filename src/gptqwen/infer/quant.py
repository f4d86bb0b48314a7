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
The division x / s costs a kernel launch per linear per step, which at batch 1 is a visible share of a step of
a small model, so in a pre-norm gptqwen `Transformer` it is folded into what produces x (`_fold_smoothing`):
the norm weights before qkv and gate_up/fc, the up rows before down, the value rows before the output projection.
MoE expert weights are plain tensors, not Linears, and stay in float. `bench/decode.py --int8` measures it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """`y = x @ (q * scale).T + b` with `q` int8 [out, in] and one scale per output row."""

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor | None = None, input_smoothed: bool = False) -> None:
        """`smooth`: SmoothQuant channel scales the weight takes; the input is divided by them here, unless
        `input_smoothed` says the layer feeding this one already did (`_fold_smoothing`)."""
        super().__init__()
        w = linear.weight.detach().float()
        if smooth is not None:
            w = w * smooth[None, :].to(w)
        inv = None if smooth is None or input_smoothed else (1.0 / smooth).to(linear.weight.dtype)
        self.register_buffer("inv_smooth", inv)
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
    folded: set[str] = set()
    cfg = getattr(model, "config", None)
    if alpha > 0 and cfg is not None and hasattr(cfg, "vocab_size"):
        device = next(model.parameters()).device
        if calibration is None:
            g = torch.Generator().manual_seed(0)
            calibration = torch.randint(0, cfg.vocab_size, (1, min(64, cfg.max_seq_len)), generator=g)
        amaxes = _input_absmax(model, targets, calibration.to(device))
        for name, amax in amaxes.items():
            wmax = targets[name].weight.detach().abs().amax(0).float()
            smooth[name] = _smoothing(amax, wmax, alpha)
        folded = _fold_smoothing(model, targets, smooth, amaxes, alpha)
    for name, linear in targets.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(linear, smooth.get(name), input_smoothed=name in folded))
    return model


def _smoothing(amax: torch.Tensor, wmax: torch.Tensor, alpha: float) -> torch.Tensor:
    return (amax.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def _fold_smoothing(model: nn.Module, targets: dict[str, nn.Linear], smooth: dict[str, torch.Tensor],
                    amaxes: dict[str, torch.Tensor], alpha: float) -> set[str]:
    """Divide the producers of smoothed inputs by the scales, in place; return the linears so covered.

    Exact rewrites of a pre-norm block: norm(x) * w / s = norm(x) * (w / s) (LayerNorm's bias too);
    silu(g) * u / s = silu(g) * (u / s), so down's scales go into the up rows; attention output channel
    (head h, dim j) is a mix of value channel (kv head of h, j), so the output projection's scales, made equal
    across the query heads that share a kv head, go into the value rows. A norm that also feeds a MoE router
    and its experts, a post-norm block or any other layout keeps the division in the linear.
    """
    cfg, blocks = getattr(model, "config", None), getattr(model, "blocks", None)
    if cfg is None or blocks is None or not getattr(cfg, "pre_norm", False):
        return set()
    folded: set[str] = set()

    def fold_norm(norm: nn.Module, name: str) -> None:
        if name in smooth and getattr(norm, "weight", None) is not None:
            inv = 1.0 / smooth[name]
            norm.weight.mul_(inv.to(norm.weight))
            if getattr(norm, "bias", None) is not None:
                norm.bias.mul_(inv.to(norm.bias))
            folded.add(name)

    def fold_rows(linear: nn.Linear, start: int, inv: torch.Tensor, name: str) -> None:
        rows = slice(start, start + inv.numel())
        linear.weight[rows].mul_(inv[:, None].to(linear.weight))
        if linear.bias is not None:
            linear.bias[rows].mul_(inv.to(linear.bias))
        folded.add(name)

    for i, block in enumerate(blocks):
        pre = f"blocks.{i}."
        attn, mlp = block.attn, block.mlp
        qkv, proj = pre + "attn.qkv", pre + "attn.proj"
        if proj in smooth and targets.get(qkv) is attn.qkv:
            # one scale per (kv head, channel): maxima taken over the query heads of each group
            hk, d = attn.n_kv_head, attn.head_dim
            group = lambda t: t.view(hk, attn.n_head // hk, d).amax(1)  # noqa: E731
            wmax = attn.proj.weight.abs().amax(0).float()
            s = _smoothing(group(amaxes[proj]), group(wmax), alpha)  # [hk, d]
            smooth[proj] = s[:, None, :].expand(hk, attn.n_head // hk, d).reshape(-1)
            fold_rows(attn.qkv, attn.n_head * d + hk * d, 1.0 / s.reshape(-1), proj)
        fold_norm(block.ln_1, qkv)
        if getattr(block, "is_moe", False):
            continue
        down = pre + "mlp.down"
        if getattr(mlp, "kind", None) == "swiglu" and down in smooth and targets.get(pre + "mlp.gate_up") is mlp.gate_up:
            fold_rows(mlp.gate_up, mlp.down.in_features, 1.0 / smooth[down], down)
        fold_norm(block.ln_2, pre + ("mlp.fc" if getattr(mlp, "kind", None) == "gelu" else "mlp.gate_up"))
    return folded
