"""gptqwen.ops: every custom op passes `torch.library.opcheck`, every op equals its PyTorch reference (values and
gradients), dispatch picks the reference where the C passes do not apply, the C library's structs and error
codes are checked, and a compiled training step keeps the C passes with no graph break and equals eager."""

from __future__ import annotations

import ctypes

import pytest
import torch
import torch.nn.functional as F

from gptqwen import ops
from gptqwen.config import Config
from gptqwen.model import Transformer
from gptqwen.model.rope import Rotary
from gptqwen.ops import _clib

needs_kernels = pytest.mark.skipif(_clib.library() is None, reason="no C compiler: the kernels are not available")


def _qkv(B=2, T=9, hq=4, hk=2, d=16, grad=False):
    """q, k, v views inside one fused QKV tensor, as the attention layer has them."""
    qkv = torch.randn(B, T, (hq + 2 * hk) * d, requires_grad=grad)
    return qkv, qkv.view(B, T, hq + 2 * hk, d).split((hq, hk, hk), dim=2)


def _tables(T=9, D=16):
    return Rotary(D, 10000.0, None, 32)(None, T, torch.device("cpu"))


def _opcheck_cases():
    """(op, args) for every custom op, forward and backward, in the layouts the model passes."""
    torch.manual_seed(0)
    x, w = torch.randn(3, 5, 24, requires_grad=True), torch.rand(24, requires_grad=True) + 0.5
    rstd = torch.rand(3, 5, 1) + 0.5
    h = torch.randn(4, 2 * 20, requires_grad=True)
    _, (q, k, v) = _qkv(grad=True)
    qk = torch.cat((q, k), 2).detach().requires_grad_()
    cos, sin = _tables()
    nw = (torch.rand(6, 16) + 0.5).requires_grad_()
    o, lse = torch.ops.gptqwen.causal_attention(q.detach(), k.detach(), v.detach())
    hidden, head = torch.randn(10, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    targets = torch.tensor([1, 2, -100, 4, 5, 6, 7, 8, 9, 0])
    _, lse_, picked_, wb_ = torch.ops.gptqwen.linear_cross_entropy_bf16(hidden.detach(), head.detach(), targets)
    bf16_saved = (wb_, targets, lse_, picked_)
    g = torch.ops.gptqwen
    return {
        "rms_norm": (g.rms_norm.default, (x, w, 1e-6)),
        "rms_norm_backward": (g.rms_norm_backward.default, (x.detach(), w.detach(), rstd, torch.randn(3, 5, 24), True)),
        "gelu": (g.gelu.default, (h,)),
        "gelu_backward": (g.gelu_backward.default, (h.detach(), torch.randn(4, 40))),
        "swiglu": (g.swiglu.default, (h,)),
        "swiglu_backward": (g.swiglu_backward.default, (h.detach(), torch.randn(4, 20))),
        "norm_rope": (g.norm_rope.default, (qk, cos, sin, nw, 1e-6)),
        "norm_rope_no_norm": (g.norm_rope.default, (qk, cos, sin, None, 1e-6)),
        "norm_rope_backward": (g.norm_rope_backward.default,
                               (qk.detach(), cos, sin, nw.detach(), torch.rand(2, 9, 6) + 0.5, torch.randn(2, 9, 6, 16),
                                True)),
        "causal_attention": (g.causal_attention.default, (q, k, v)),
        "causal_attention_backward": (g.causal_attention_backward.default,
                                      (q.detach(), k.detach(), v.detach(), o, lse, torch.randn_like(o))),
        "linear_cross_entropy": (g.linear_cross_entropy.default, (hidden, head, targets, True, True)),
        "linear_cross_entropy_bf16": (g.linear_cross_entropy_bf16.default, (hidden, head, targets)),
        "linear_cross_entropy_bf16_backward": (g.linear_cross_entropy_bf16_backward.default,
                                               (hidden.detach(), head.detach(), *bf16_saved, torch.tensor(0.5),
                                                True, True)),
    }


OPCHECK_CASES = ["rms_norm", "rms_norm_backward", "gelu", "gelu_backward", "swiglu", "swiglu_backward", "norm_rope",
                 "norm_rope_no_norm", "norm_rope_backward", "causal_attention", "causal_attention_backward",
                 "linear_cross_entropy", "linear_cross_entropy_bf16", "linear_cross_entropy_bf16_backward"]


def test_every_custom_op_is_opchecked():
    registered = {name for name in dir(torch.ops.gptqwen) if not name.startswith("_")} - {"name"}
    assert registered <= {case.removesuffix("_no_norm") for case in OPCHECK_CASES}, registered


@needs_kernels
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def _grads(fn, *inputs):
    """fn(*leaf copies) and the gradients of sum(out * probe)."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) if t is not None else None for t in inputs]
    out = fn(*leaves)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3)))
    return [out.detach()] + [t.grad for t in leaves if t is not None and t.requires_grad]


def _same(a, b, tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=tol, rtol=tol)


@needs_kernels
def test_each_op_equals_its_reference():
    torch.manual_seed(1)
    x, w = torch.randn(4, 7, 96, requires_grad=True), (torch.rand(96) + 0.5).requires_grad_()
    _same(_grads(lambda a, b: ops.rms_norm(a, b, 1e-6), x, w),
          _grads(lambda a, b: ops.rms_norm_reference(a, b, 1e-6), x, w))
    h = (torch.randn(6, 50, 2 * 40) * 3).requires_grad_()
    _same(_grads(ops.gelu, h), _grads(ops.gelu_reference, h))
    _same(_grads(ops.swiglu, h), _grads(ops.swiglu_reference, h))
    qkv, _ = _qkv(B=3, T=20, grad=True)
    cos, sin = _tables(T=20)
    nw = (torch.rand(6, 16) + 0.5).requires_grad_()

    def rope(fn):
        return lambda t, u: fn(t.view(3, 20, 8, 16)[:, :, :6], cos, sin, u, 1e-6)  # a view, as in the model

    _same(_grads(rope(ops.norm_rope), qkv, nw), _grads(rope(ops.norm_rope_reference), qkv, nw))

    def attention(fn):
        return lambda t: fn(*t.view(3, 20, 8, 16).split((4, 2, 2), dim=2))

    _same(_grads(attention(ops.causal_attention), qkv), _grads(attention(ops.causal_attention_reference), qkv))
    hidden, head = torch.randn(40, 24, requires_grad=True), (0.3 * torch.randn(300, 24)).requires_grad_()
    targets = torch.randint(0, 300, (40,))
    targets[::5] = -100
    _same(_grads(lambda a, b: ops.linear_cross_entropy(a, b, targets), hidden, head),
          _grads(lambda a, b: ops.linear_cross_entropy_reference(a, b, targets), hidden, head))


def _bf16_head_case(n=300, vocab=1000, dim=24):
    torch.manual_seed(2)
    hidden, head = torch.randn(n, dim, requires_grad=True), (0.3 * torch.randn(vocab, dim)).requires_grad_()
    targets = torch.randint(0, vocab, (n,))
    targets[::7] = -100
    return hidden, head, targets


def _close_bf16(ours, want):
    """Equal up to bf16 rounding: the loss to 1e-4, each gradient to 1% of its largest entry."""
    torch.testing.assert_close(ours[0], want[0], atol=1e-4, rtol=1e-4)
    for a, b in zip(ours[1:], want[1:]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=1e-2 * b.abs().max().item(), rtol=0)


@needs_kernels
@pytest.mark.parametrize("blocks", ["one", "many"])
def test_bf16_linear_cross_entropy_equals_the_autocast_reference(monkeypatch, blocks):
    """Under bf16 autocast the fused head (vocabulary blocks, C passes) matches autocast's own head + loss; "many"
    shrinks the blocks and token chunks so that the last block is partial and d(weight) accumulates."""
    from gptqwen.ops import loss as loss_mod

    if blocks == "many":
        monkeypatch.setattr(loss_mod, "_BF16_BLOCK_ELEMENTS", 64 * 128)
        monkeypatch.setattr(loss_mod, "_BF16_TOKENS", 128)
    hidden, head, targets = _bf16_head_case()

    def autocast(fn):
        def run(a, b):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert ops.fuses_linear_cross_entropy(a, b)
                return fn(a, b, targets)
        return run

    _close_bf16(_grads(autocast(ops.linear_cross_entropy), hidden, head),
                _grads(autocast(ops.linear_cross_entropy_reference), hidden, head))
    # bf16 tensors without autocast take the same path, with bf16 gradients
    hb, wb = hidden.detach().bfloat16().requires_grad_(), head.detach().bfloat16().requires_grad_()
    assert ops.fuses_linear_cross_entropy(hb, wb)
    _close_bf16(_grads(lambda a, b: ops.linear_cross_entropy(a, b, targets), hb, wb),
                _grads(lambda a, b: ops.linear_cross_entropy_reference(a, b, targets), hb, wb))


def test_dispatch_takes_the_reference_where_c_does_not_apply(monkeypatch):
    """bf16, a 2-D norm weight, inference with the kernels off: the reference, with the same numbers."""
    x = torch.randn(3, 32)
    w = torch.rand(32) + 0.5
    assert torch.equal(ops.rms_norm(x.bfloat16(), w.bfloat16(), 1e-6),
                       ops.rms_norm_reference(x.bfloat16(), w.bfloat16(), 1e-6))
    w2 = torch.rand(3, 32)
    assert torch.equal(ops.rms_norm(x, w2, 1e-6), ops.rms_norm_reference(x, w2, 1e-6))
    monkeypatch.setattr(_clib, "library", lambda: None)
    assert not ops.available()
    assert torch.equal(ops.gelu(x), F.gelu(x, approximate="tanh"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 head needs the C passes
        assert not ops.fuses_linear_cross_entropy(x.requires_grad_(), w2)
    with torch.no_grad():  # no backward follows: the loss is the plain one
        assert torch.equal(ops.linear_cross_entropy(x, w2, torch.tensor([0, 1, 2])),
                           ops.linear_cross_entropy_reference(x, w2, torch.tensor([0, 1, 2])))


@needs_kernels
def test_struct_mirrors_match_the_c_sizes_and_a_mismatch_is_refused(monkeypatch, tmp_path):
    lib = _clib.library()
    for name, struct in _clib._STRUCTS.items():
        assert getattr(lib, name)() == ctypes.sizeof(struct)

    class Shorter(ctypes.Structure):
        _fields_ = [("fmt", ctypes.c_int64)]

    monkeypatch.setitem(_clib._STRUCTS, "gq_sizeof_linear", Shorter)
    monkeypatch.setenv("GPTQWEN_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match="size of linear"):
        assert _clib.load() is None


def test_c_error_codes_raise():
    _clib.check(0, "gq_x")
    with pytest.raises(RuntimeError, match="out of memory"):
        _clib.check(1, "gq_attention_forward")


def _compiled_step(name: str):
    """Eager and torch.compile'd (fullgraph) losses and gradients of a tiny model's training step."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Transformer(Config.from_name(name, n_layer=2))
    ids = torch.randint(0, model.config.vocab_size, (4, 33))
    results = []
    for fn in (model, torch.compile(model, fullgraph=True)):
        model.zero_grad(set_to_none=True)
        loss = fn(ids[:, :-1], targets=ids[:, 1:]).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    return model, ids, results


@needs_kernels
@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen3-tiny", "gpt2-tiny"])
def test_compiled_training_step_keeps_the_c_passes_and_equals_eager(name):
    model, ids, ((la, ga), (lb, gb)) = _compiled_step(name)  # fullgraph=True: a graph break would raise
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    graph = torch._dynamo.explain(lambda i: model(i[:, :-1], targets=i[:, 1:]).loss)(ids)
    assert graph.graph_break_count == 0
    called = {str(n.target).removesuffix(".default") for g in graph.graphs for n in g.graph.nodes
              if n.op == "call_function"}
    expected = {"gptqwen.linear_cross_entropy", "gptqwen.causal_attention"}
    if name.startswith("qwen"):
        expected |= {"gptqwen.swiglu", "gptqwen.rms_norm", "gptqwen.norm_rope"}
    else:
        expected.add("gptqwen.gelu")
    assert expected <= called, sorted(c for c in called if "gptqwen" in c)


@needs_kernels
@pytest.mark.slow
def test_compiled_bf16_training_step_keeps_the_fused_head_and_equals_eager():
    """train.dtype=bf16 train.compile=true: the graph keeps the bf16 head + loss op, with no graph break."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Transformer(Config.from_name("gpt2-tiny", n_layer=2))
    ids = torch.randint(0, model.config.vocab_size, (4, 33))

    def step(fn):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(ids[:, :-1], targets=ids[:, 1:]).loss
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]

    graphs = []

    def backend(gm, inputs):  # AOT autograd without inductor: the op's fake and autograd registrations are what count
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, inputs)

    eager, compiled = step(model), step(torch.compile(model, fullgraph=True, backend=backend))  # a break would raise
    _close_bf16(compiled, eager)
    called = {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}
    assert "gptqwen.linear_cross_entropy_bf16.default" in called, sorted(c for c in called if "gptqwen" in c)
