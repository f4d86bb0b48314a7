"""The decoder itself: KV cache vs full recompute, left padding, packing, the local band, GQA vs MHA,
Qwen v1 logn / dynamic NTK, initialisation and the small forward options."""

from __future__ import annotations

import math

import pytest
import torch

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.model import Transformer
from gptqwen.model.attention import AttnContext, build_masks
from gptqwen.model.rope import qwen_ntk_alpha

TOL = 1e-5

CACHE_CASES = {
    "learned-pos": Config.from_name("gpt2-tiny", n_layer=2, n_embd=64),
    "post-norm": Config.from_name("gpt1-tiny"),
    "gqa-qknorm": Config.from_name("qwen3-tiny", n_layer=2),
    "band": Config.from_name("gpt3-tiny", local_band=8),
    "moe": Config.from_name("qwen3-moe-tiny"),
    "moe-shared": Config.from_name("qwen2-moe-tiny"),
    "yarn": Config.from_name("qwen2-tiny", rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                          "original_max_position_embeddings": 16}),
}


def _model(cfg: Config) -> Transformer:
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def _ids(cfg: Config, B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", list(CACHE_CASES))
@torch.no_grad()
def test_cache_decode_equals_full_recompute(case):
    cfg = CACHE_CASES[case]
    model = _model(cfg)
    ids = _ids(cfg, 2, 30)
    full = model(ids).logits
    cache = model.new_cache(2, 64)
    pieces = [model(ids[:, :17], cache=cache).logits]  # prefill longer than the band
    for t in range(17, 22):  # single-token decode
        pieces.append(model(ids[:, t:t + 1], cache=cache).logits)
    pieces.append(model(ids[:, 22:], cache=cache).logits)  # a multi-token chunk on top of the cache
    assert cache.length == 30
    assert (torch.cat(pieces, 1) - full).abs().max().item() <= TOL
    cache.reset()
    assert cache.length == 0
    assert (model(ids, cache=cache, logits_to_keep=1).logits - full[:, -1:]).abs().max().item() <= TOL


@pytest.mark.parametrize("case", ["learned-pos", "gqa-qknorm", "band", "moe"])
@torch.no_grad()
def test_left_padded_batch_with_cache(case):
    """Each row of a left-padded batch decodes exactly like the row alone."""
    cfg = CACHE_CASES[case]
    model = _model(cfg)
    lengths, pad_to, steps = (20, 13), 20, 4
    rows = [_ids(cfg, 1, n + steps, seed=i + 3) for i, n in enumerate(lengths)]
    batch = torch.zeros(2, pad_to, dtype=torch.long)
    mask = torch.zeros(2, pad_to + steps, dtype=torch.long)
    for i, n in enumerate(lengths):
        batch[i, pad_to - n:] = rows[i][0, :n]
        mask[i, pad_to - n:] = 1
    cache = model.new_cache(2, pad_to + steps)
    out = [model(batch, attention_mask=mask[:, :pad_to], cache=cache).logits[:, -1:]]
    for s in range(steps - 1):
        nxt = torch.stack([rows[i][0, lengths[i] + s] for i in range(2)])[:, None]
        out.append(model(nxt, attention_mask=mask[:, :pad_to + s + 1], cache=cache).logits)
    got = torch.cat(out, 1)
    for i, n in enumerate(lengths):
        alone = model(rows[i][:, :n + steps - 1]).logits[0, n - 1:]
        assert (got[i] - alone).abs().max().item() <= TOL


@torch.no_grad()
def test_packed_documents_attend_within_themselves():
    for cfg in (CACHE_CASES["learned-pos"], CACHE_CASES["gqa-qknorm"]):
        model = _model(cfg)
        a, b = _ids(cfg, 1, 9, seed=5), _ids(cfg, 1, 7, seed=6)
        packed = torch.cat([a, b], 1)
        docs = torch.tensor([[0] * 9 + [1] * 7])
        got = model(packed, document_ids=docs).logits
        want = torch.cat([model(a).logits, model(b).logits], 1)
        assert (got - want).abs().max().item() <= TOL


@torch.no_grad()
def test_local_band_really_masks():
    cfg = Config.from_name("gpt3-tiny", local_band=8)
    model = _model(cfg)
    attn = model.blocks[1].attn
    assert attn.local and not model.blocks[0].attn.local
    T = 20
    x = torch.randn(1, T, cfg.n_embd)
    dense, local, causal = build_masks(cfg, T, 0, None, None, x.device)
    ctx = AttnContext(None, None, dense, local, causal)
    y = attn(x, ctx)
    x2 = x.clone()
    x2[:, 0] += 10.0  # token 0 is within the band of queries 0..7 only
    y2 = attn(x2, ctx)
    changed = (y - y2).abs().amax(-1)[0] > 1e-6
    assert changed[:8].all() and not changed[8:].any()
    # the dense layer sees every earlier token
    y3, y4 = model.blocks[0].attn(x, ctx), model.blocks[0].attn(x2, ctx)
    assert ((y3 - y4).abs().amax(-1)[0] > 1e-6).all()


@torch.no_grad()
def test_gqa_with_repeated_kv_heads_equals_mha():
    gqa_cfg = Config.from_name("qwen3-tiny", n_layer=2)  # 4 query heads, 2 KV heads
    mha_cfg = gqa_cfg.replace(n_kv_head=gqa_cfg.n_head)
    gqa, mha = _model(gqa_cfg), _model(mha_cfg)
    state = gqa.state_dict()
    d, hq, hk = gqa_cfg.head_dim, gqa_cfg.n_head, gqa_cfg.n_kv_head
    for i in range(gqa_cfg.n_layer):
        key = f"blocks.{i}.attn.qkv.weight"
        q, k, v = state[key].split((hq * d, hk * d, hk * d))
        rep = lambda w: w.view(hk, d, -1).repeat_interleave(hq // hk, 0).reshape(hq * d, -1)  # noqa: E731
        state[key] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(state)
    ids = _ids(gqa_cfg, 2, 16)
    assert (gqa(ids).logits - mha(ids).logits).abs().max().item() <= TOL


@torch.no_grad()
def test_qwen1_logn_and_dynamic_ntk():
    assert [qwen_ntk_alpha(n, 100) for n in (50, 100, 150, 200, 250)] == [1.0, 1.0, 3.0, 3.0, 7.0]
    cfg = Config.from_name("qwen-tiny", max_seq_len=16, dynamic_ntk=False)
    with_logn = _model(cfg)
    without = _model(cfg.replace(logn_attn=False))
    ids = _ids(cfg, 1, 24)
    a, b = with_logn(ids).logits, without(ids).logits
    diff = (a - b).abs().amax(-1)[0]
    assert diff[:16].max() <= TOL and (diff[16:] > 1e-6).all()  # only queries beyond seq_length are rescaled
    with_logn.train()  # logn and NTK are inference-time features
    assert (with_logn(ids).logits - b).abs().max() <= TOL
    ntk = _model(cfg.replace(logn_attn=False, dynamic_ntk=True))
    assert (ntk(ids[:, :16]).logits - without(ids[:, :16]).logits).abs().max() <= TOL
    assert (ntk(ids).logits - b).abs().max() > 1e-5  # longer than seq_length: the RoPE base grows


def test_init_scaled_residual_and_tied():
    cfg = Config.from_name("gpt2-tiny")
    model = _model(cfg)
    assert model.lm_head.weight is model.wte.weight
    assert model.num_params() == cfg.num_params()
    std = lambda p: p.detach().std().item()  # noqa: E731
    assert std(model.blocks[0].attn.qkv.weight) == pytest.approx(0.02, rel=0.1)
    assert std(model.blocks[0].mlp.proj.weight) == pytest.approx(0.02 / math.sqrt(2 * cfg.n_layer), rel=0.1)
    assert model.blocks[0].attn.qkv.bias.abs().max() == 0


def test_loss_options_and_gradients():
    cfg = Config.from_name("qwen3-tiny", n_layer=2)
    model = _model(cfg).train()
    ids = _ids(cfg, 2, 12)
    targets = ids.roll(-1, 1)
    targets[:, -1] = -100
    out = model(ids, targets=targets, return_hidden=True)
    want = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, cfg.vocab_size), targets[:, :-1].reshape(-1))
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert out.hidden.shape == (2, 12, cfg.n_embd) and out.aux_loss is None and out.router_logits is None
    out.loss.backward()  # activation checkpointing (applied from outside the model) is tested in test_train.py
    assert all(p.grad is not None for p in model.parameters())


def test_context_overflow_is_a_user_error():
    cfg = Config.from_name("gpt1-tiny")
    model = _model(cfg)
    with pytest.raises(UserError, match="longer than the model's context"):
        model(torch.zeros(1, cfg.max_seq_len + 1, dtype=torch.long))
    cache = model.new_cache(1, 8)
    with pytest.raises(UserError, match="does not fit the KV cache"):
        model(torch.zeros(1, 9, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("name", ["qwen3-tiny", "qwen3-moe-tiny", "gpt2-tiny"])
@torch.no_grad()
def test_bfloat16_forward_and_cache(name):
    cfg = Config.from_name(name, n_layer=2)
    model = _model(cfg)
    ids = _ids(cfg, 2, 12)
    want = model(ids).logits
    model = model.to(torch.bfloat16)
    cache = model.new_cache(2, 16)
    got = torch.cat([model(ids[:, :8], cache=cache).logits, model(ids[:, 8:], cache=cache).logits], 1)
    assert got.dtype == cache.k.dtype == torch.bfloat16
    assert (got.float() - want).abs().max().item() < 0.05 * want.abs().max().item()


def test_hand_written_backwards_match_autograd(monkeypatch):
    """The ops with closed-form backwards (GELU via sigmoid, SwiGLU, RMSNorm, QK-norm + RoPE, and the chunked
    LM-head cross-entropy) against torch autograd of the plain formulas."""
    import torch.nn.functional as F

    from gptqwen import ops
    from gptqwen.model.rope import Rotary
    from gptqwen.ops import loss as fused_loss

    g = torch.Generator().manual_seed(0)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 5, 8, generator=g, **f64)
    assert torch.autograd.gradcheck(lambda a, w: ops.rms_norm(a, w, 1e-6), (x, torch.randn(8, generator=g, **f64)))
    assert torch.autograd.gradcheck(lambda a, w: ops.rms_norm(a, w, 1e-6), (x, torch.randn(5, 8, generator=g, **f64)))
    assert torch.autograd.gradcheck(ops.swiglu, (torch.randn(4, 6, generator=g, **f64),))

    def grads(fn, *inputs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
        return [out.detach()] + [t.grad for t in leaves]

    def close(a, b, tol=1e-5):
        return all(torch.allclose(u, v, atol=tol, rtol=tol) for u, v in zip(a, b))

    h = 3 * torch.randn(64, 600, generator=g)
    assert close(grads(ops.gelu, h), grads(lambda t: F.gelu(t, approximate="tanh"), h))

    cos, sin = Rotary(16, 1e4, None, 32)(torch.randint(0, 30, (2, 7), generator=g), 32, "cpu")
    qk, w = torch.randn(2, 7, 6, 16, generator=g), 1 + 0.1 * torch.randn(6, 16, generator=g)

    def plain_rope(t, weight=None):
        if weight is not None:
            t = weight * t * torch.rsqrt(t.square().mean(-1, keepdim=True) + 1e-6)
        return t * cos + t.roll(8, dims=-1) * sin

    assert close(grads(lambda t, u: ops.norm_rope(t, cos, sin, u, 1e-6), qk, w), grads(plain_rope, qk, w))
    assert close(grads(lambda t: ops.norm_rope(t, cos, sin), qk), grads(plain_rope, qk))

    monkeypatch.setattr(fused_loss, "_MIN_CHUNK_TOKENS", 16)  # several chunks, the last one shorter
    monkeypatch.setattr(fused_loss, "_CHUNK_ELEMENTS", 16 * 50)
    hidden, head = torch.randn(37, 12, generator=g), 0.3 * torch.randn(50, 12, generator=g)
    targets = torch.randint(0, 50, (37,), generator=g)
    targets[::4] = -100
    want = grads(lambda a, b: F.cross_entropy(a @ b.t(), targets), hidden, head)
    assert close(grads(lambda a, b: ops.linear_cross_entropy(a, b, targets), hidden, head), want)
    plain = hidden.clone().requires_grad_()
    F.cross_entropy(plain @ head.t(), targets).backward()
    loss = ops.linear_cross_entropy(hidden.requires_grad_(), head, targets)  # frozen head: no weight grad
    loss.backward(retain_graph=True)
    assert torch.allclose(hidden.grad, plain.grad, atol=1e-6)
    loss.backward()  # a second backward (retain_graph) gives the same gradient again
    assert torch.allclose(hidden.grad, 2 * plain.grad, atol=1e-6)


@pytest.mark.parametrize("name", ["gpt2-tiny", "qwen3-tiny", "qwen2-tiny"])
def test_training_step_matches_float64(name):
    """The fp32 training forward/backward (fused kernels, loss fused with the head, lazily built logits)
    against the same model in fp64, where the fp32-only fast paths are off; packed rows gather RoPE."""
    import copy

    cfg = Config.from_name(name, n_layer=2)
    model = _model(cfg).train()
    ref = copy.deepcopy(model).double()
    ids = _ids(cfg, 2, 12)
    targets = ids.roll(-1, 1)
    targets[:, -1] = -100
    docs = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    for kwargs in ({}, {"document_ids": docs}):
        out, want = model(ids, targets=targets, **kwargs), ref(ids, targets=targets, **kwargs)
        out.loss.backward()
        want.loss.backward()
        assert out.loss.item() == pytest.approx(want.loss.item(), abs=1e-5)
        assert torch.allclose(out.logits.double(), want.logits, atol=1e-5)
        for (n, p), q in zip(model.named_parameters(), ref.parameters()):
            assert torch.allclose(p.grad.double(), q.grad, atol=1e-6, rtol=1e-4), n
        model.zero_grad()
        ref.zero_grad()


def test_rope_tables_built_in_inference_mode_serve_training():
    """Sampling first (inference mode), then training the same model (as GRPO does): the cached RoPE tables
    must be ordinary tensors, or the backward fails on saved inference tensors."""
    model = Transformer(Config.from_name("qwen3-tiny"))
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.inference_mode():
        model(ids)
    model(ids, targets=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
