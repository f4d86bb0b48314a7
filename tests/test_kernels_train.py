"""The C kernels of the fp32 CPU training step (RMSNorm backward, SwiGLU, GELU, QK-norm + RoPE, attention): the
same values and gradients as the PyTorch references they replace (taken by turning the kernels off)."""

from __future__ import annotations

import pytest
import torch

from gptqwen.model.rope import Rotary
from gptqwen.ops import _clib, gelu, linear_cross_entropy, norm_rope, rms_norm, swiglu

pytestmark = pytest.mark.skipif(_clib.library() is None, reason="no C compiler: the kernels are not available")


def run_both(fn, *inputs):
    """fn(*leaf copies) and the gradients of sum(out * probe), with the kernels on and off."""
    results = []
    for off in (False, True):
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) if t is not None else None for t in inputs]
        with pytest.MonkeyPatch.context() as mp:
            if off:
                mp.setattr(_clib, "library", lambda: None)
            out = fn(*leaves)
            torch.manual_seed(5)
            (out * torch.randn_like(out)).sum().backward()
        results.append((out.detach(), [t.grad if t is not None and t.requires_grad else None for t in leaves]))
    return results


def assert_same(results, atol=2e-5):
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("rows", [3, 2048])  # one thread / several threads (the partial weight sums)
def test_rms_norm_backward(rows):
    x = torch.randn(rows, 96, requires_grad=True)
    w = (torch.rand(96) + 0.5).requires_grad_()
    assert_same(run_both(lambda x, w: rms_norm(x, w, 1e-6), x, w))


@pytest.mark.parametrize("width", [83, 384])  # a tail past the 8-wide loop, and the SIMD body
def test_swiglu_forward_backward(width):
    h = (torch.randn(6, 50, 2 * width) * 4).requires_grad_()  # wide range: exp's reduction and clamping
    assert_same(run_both(swiglu, h))
    with torch.no_grad():  # inference takes the same kernel
        torch.testing.assert_close(swiglu(h), torch.nn.functional.silu(h[..., :width]) * h[..., width:],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [37, 40000])  # a scalar tail only; threads and the SIMD body
def test_gelu_forward_backward(n):
    x = (torch.randn(n) * 4).requires_grad_()
    assert_same(run_both(gelu, x))
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    torch.testing.assert_close(gelu(x), ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(gelu(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("gathered", [False, True])
def test_norm_rope_on_the_fused_qkv_view(qk_norm, gathered):
    B, T, hq, hk, D = 3, 40, 4, 2, 32
    qkv = torch.randn(B, T, (hq + 2 * hk) * D, requires_grad=True)
    w = (torch.rand(hq + hk, D) + 0.5).requires_grad_() if qk_norm else None
    rot = Rotary(D, 10000.0, None, 128)
    if gathered:  # per-row positions (left padding): tables [B, T, 1, D]
        pos = torch.stack([torch.arange(T) + i for i in range(B)])
        cos, sin = rot(pos, 128, torch.device("cpu"))
    else:
        cos, sin = rot(None, T, torch.device("cpu"))

    def f(qkv, w):
        qk = qkv.view(B, T, hq + 2 * hk, D)[:, :, : hq + hk]  # strided, as in the attention layer
        return norm_rope(qk, cos, sin, w, 1e-6)

    assert_same(run_both(f, qkv, w))
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:  # inference takes the kernel too
        fast = f(qkv, w)
        mp.setattr(_clib, "library", lambda: None)
        torch.testing.assert_close(fast, f(qkv, w), atol=2e-5, rtol=1e-5)


def test_layouts_the_kernel_cannot_read_fall_back():
    x = torch.randn(2, 5, 3, 8).transpose(1, 2)  # heads not contiguous within a row
    cos, sin = Rotary(8, 10000.0, None, 16)(None, 3, torch.device("cpu"))
    torch.testing.assert_close(norm_rope(x, cos, sin), norm_rope(x.contiguous(), cos, sin))
    # the op itself copies such a layout rather than misread it (torch.compile may hand it any strides)
    torch.testing.assert_close(torch.ops.gptqwen.norm_rope(x, cos, sin, None, 1e-6)[0],
                               norm_rope(x.contiguous(), cos, sin))


def _sdpa(q, k, v):
    """The reference: torch's SDPA on [B, H, T, d] (K/V heads repeated for GQA), back to [B, T, hq, d]."""
    rep = q.shape[2] // k.shape[2]
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)))
    return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True).transpose(1, 2)


@pytest.mark.parametrize("T, hq, hk, d", [(1, 2, 2, 8), (37, 4, 2, 32), (128, 4, 4, 32), (70, 6, 2, 24),
                                          (64, 2, 1, 64)])
def test_causal_attention_matches_sdpa(T, hq, hk, d):
    B = 3
    qkv = torch.randn(B, T, (hq + 2 * hk) * d, requires_grad=True)  # views into one tensor, as in the model
    probe = torch.randn(B, T, hq, d)

    def grads(fn):
        qkv.grad = None
        q, k, v = qkv.view(B, T, hq + 2 * hk, d).split((hq, hk, hk), dim=2)
        out = fn(q, k, v)
        (out * probe).sum().backward()
        return out.detach(), qkv.grad.clone()

    (a, ga), (b, gb) = grads(lambda q, k, v: torch.ops.gptqwen.causal_attention(q, k, v)[0]), grads(_sdpa)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["qwen3-tiny", "gpt2-tiny", "qwen2-tiny"])
def test_training_step_same_with_kernels_off(name):
    """A whole forward + backward (loss and every parameter gradient) with all the C passes vs without."""
    from gptqwen.config import Config
    from gptqwen.model import Transformer

    torch.manual_seed(0)
    model = Transformer(Config.from_name(name))
    ids = torch.randint(0, model.config.vocab_size, (4, 33))
    results = []
    for off in (False, True):
        model.zero_grad(set_to_none=True)
        with pytest.MonkeyPatch.context() as mp:
            if off:
                mp.setattr(_clib, "library", lambda: None)
            loss = model(ids[:, :-1], targets=ids[:, 1:]).loss
            loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (la, ga), (lb, gb) = results
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-5, rtol=1e-4, msg=n)


def test_extreme_inputs_give_finite_gradients():
    """Past exp's range (|x| > 88) in the SIMD body and the scalar tail alike: no inf * 0 = NaN."""
    x = torch.tensor([-200.0, -100.0, -89.0, -30.0, 0.0, 30.0, 89.0, 100.0, 200.0] * 3).requires_grad_()
    gelu(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, torch.autograd.grad(
        torch.nn.functional.gelu(x, approximate="tanh").sum(), x)[0], atol=1e-5, rtol=1e-5)
    h = torch.cat([x.detach(), x.detach()]).reshape(1, -1).requires_grad_()  # gate | up
    swiglu(h).sum().backward()
    assert torch.isfinite(h.grad).all()
    gate, up = h.chunk(2, -1)
    torch.testing.assert_close(h.grad, torch.autograd.grad((torch.nn.functional.silu(gate) * up).sum(), h)[0],
                               atol=1e-5, rtol=1e-5)


def test_portable_build_agrees_with_the_simd_build(tmp_path, monkeypatch):
    """The C file without AVX2 (what an ARM or older x86 machine builds) computes what the SIMD build does:
    a training step of each layout and native decode steps, float32 and q4_1."""
    from gptqwen.config import Config
    from gptqwen.infer.native import NativeDecoder
    from gptqwen.infer.quant import quantize
    from gptqwen.model import Transformer

    simd = _clib.library()
    monkeypatch.setattr(_clib, "_simd_flags", lambda: [])
    monkeypatch.setenv("GPTQWEN_CACHE", str(tmp_path))
    portable = _clib.load()
    assert portable is not None

    def outputs(lib, name: str, fmt: str | None) -> list[torch.Tensor]:
        monkeypatch.setattr(_clib, "library", lambda: lib)
        torch.manual_seed(0)
        model = Transformer(Config.from_name(name))
        ids = torch.randint(0, model.config.vocab_size, (4, 33))
        loss = model(ids[:, :-1], targets=ids[:, 1:]).loss
        loss.backward()
        out = [loss.detach()] + [p.grad for p in model.parameters()]
        model.eval()
        if fmt:
            quantize(model, fmt)
        dec = NativeDecoder.build(model)
        cache = model.new_cache(4, 40)
        with torch.inference_mode():
            model(ids, cache=cache, logits_to_keep=1)
            for i in range(3):
                out.append(dec.step(ids[:, i], torch.full((4,), 33 + i), torch.zeros(4, dtype=torch.long), cache).clone())
        return out

    for name, fmt in [("qwen3-tiny", "q4_1"), ("gpt2-tiny", None)]:
        for a, b in zip(outputs(simd, name, fmt), outputs(portable, name, fmt)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

    def bf16_head(lib) -> list[torch.Tensor]:  # csrc/loss.c; sizes off the vector width, so the tails run too
        monkeypatch.setattr(_clib, "library", lambda: lib)
        torch.manual_seed(0)
        hidden, head = torch.randn(67, 24, requires_grad=True), (0.3 * torch.randn(517, 24)).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hidden, head, torch.randint(0, 517, (67,)))
        loss.backward()
        return [loss.detach(), hidden.grad, head.grad]

    for a, b in zip(bf16_head(simd), bf16_head(portable)):  # the exponentials differ in the last bit: bf16 rounding
        torch.testing.assert_close(a, b, atol=1e-2 * a.abs().max().item(), rtol=0)
