"""Dual Chunk Attention and YaRN: DCA against a direct position-remapped attention (prefill and every decode step,
every RoPE family), DCA = plain attention while the sequence fits one chunk, YaRN tables against transformers'
rope utilities, and the bad-input errors.

    OMP_NUM_THREADS=1 .venv/bin/pytest -q tests/test_dca.py
"""

from __future__ import annotations

import math

import pytest
import torch

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.model import Transformer
from gptqwen.model.dca import extend_context, partial_attention, partial_attention_reference
from gptqwen.model.rope import Rotary, logn_scale
from test_eval import _one_thread  # noqa: F401  (autouse: tiny models run on one thread)

CHUNK, LOCAL = 16, 6

FAMILIES = {
    "qwen2-yarn": ("qwen2-tiny", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                   "original_max_position_embeddings": 32}}),
    "qwen3-qknorm": ("qwen3-tiny", {}),
    "llama3": ("qwen2-tiny", {"qkv_bias": False, "hf_model_type": "llama",
                              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),
    "linear": ("qwen2-tiny", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "qwen1-ntk-logn": ("qwen-tiny", {"max_seq_len": 32}),
}


def _model(family: str, **extra) -> Transformer:
    preset, overrides = FAMILIES[family]
    torch.manual_seed(0)
    cfg = Config.from_name(preset, **{"max_seq_len": 64, **overrides, **extra})
    return Transformer(cfg).double().eval()


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """rotate_half RoPE with full-width tables whose sine already carries the sign."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


def _naive_attention(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, q_scale: torch.Tensor | None):
    """Every (query i, key j) pair scored with the query rotated at its DCA position for that pair and the key at
    j mod s: a [T, T] position matrix, no chunking, no log-sum-exp merge."""
    B, T, _ = x.shape
    hq, hk, d = attn.n_head, attn.n_kv_head, attn.head_dim
    q, k, v = attn.qkv(x).view(B, T, hq + 2 * hk, d).split((hq, hk, hk), dim=2)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    i = torch.arange(T)[:, None].expand(T, T)
    j = torch.arange(T)[None, :].expand(T, T)
    ci, cj = i // CHUNK, j // CHUNK
    qpos = torch.where(ci == cj, i % CHUNK, torch.where(ci == cj + 1, CHUNK + (i % CHUNK).clamp(max=LOCAL - 1),
                                                        torch.full_like(i, CHUNK + LOCAL - 1)))
    kr = _rope(k, cos[j[0] % CHUNK][None, :, None], sin[j[0] % CHUNK][None, :, None])  # [B, T, hk, d]
    qr = _rope(q[:, :, None], cos[qpos][None, :, :, None], sin[qpos][None, :, :, None])  # [B, Ti, Tj, hq, d]
    if q_scale is not None:
        qr = qr * q_scale[:, :, None]
    kr = kr.repeat_interleave(hq // hk, dim=2)
    scores = torch.einsum("bijhd,bjhd->bhij", qr, kr) / math.sqrt(d)
    scores = scores.masked_fill(j > i, float("-inf"))
    y = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v.repeat_interleave(hq // hk, dim=2))
    return attn.proj(y.reshape(B, T, hq * d))


def _naive_logits(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    cfg = model.config
    T = ids.shape[1]
    cos, sin = (t[0, :, 0].double() for t in model.rotary(None, CHUNK + LOCAL, ids.device))  # no NTK growth
    q_scale = None
    if cfg.logn_attn and T > cfg.max_seq_len:
        q_scale = logn_scale(torch.arange(T), cfg.max_seq_len).double()[None, :, None, None]
    x = model.wte(ids)
    for block in model.blocks:
        x = x + _naive_attention(block.attn, block.ln_1(x), cos, sin, q_scale)
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_dca_equals_naive_remapped_attention_prefill_and_every_decode_step(family):
    model = _model(family, dca={"chunk_size": CHUNK, "local_size": LOCAL})
    ids = torch.randint(0, model.config.vocab_size, (2, 52))  # 4 chunks: all three groups of keys
    with torch.no_grad():
        want = _naive_logits(model, ids)
        assert (model(ids).logits - want).abs().max() < 1e-5  # prefill without a cache (scoring)
        cache = model.new_cache(2, 52)
        got = [model(ids[:, :21], cache=cache).logits]  # prefill past one chunk, then one token at a time
        for t in range(21, 52):
            step = model(ids[:, t:t + 1], cache=cache).logits
            assert (step[:, 0] - want[:, t]).abs().max() < 1e-5, f"decode step at position {t}"
            got.append(step)
    assert (torch.cat(got, 1) - want).abs().max() < 1e-5


@pytest.mark.parametrize("causal", [False, True])
def test_partial_attention_flash_and_reference_agree(causal):
    q, k, v = torch.randn(2, 6, 9, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    (o1, l1), (o2, l2) = partial_attention(q, k, v, causal), partial_attention_reference(q, k, v, causal)
    assert (o1 - o2).abs().max() < 1e-5 and (l1 - l2).abs().max() < 1e-5
    if not causal:  # against SDPA (which returns no log-sum-exp)
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        assert (o1 - want).abs().max() < 1e-5


def test_dca_left_padded_batch_matches_each_row_alone():
    model = _model("qwen3-qknorm", dca={"chunk_size": CHUNK, "local_size": LOCAL})
    a, b = torch.randint(0, 512, (1, 50)), torch.randint(0, 512, (1, 37))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 13, dtype=torch.long), b], 1)])
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[1, :13] = 0
    with torch.no_grad():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(ids, position_ids=pos, attention_mask=mask).logits
        assert (out[0] - _naive_logits(model, a)[0]).abs().max() < 1e-5
        assert (out[1, 13:] - _naive_logits(model, b)[0]).abs().max() < 1e-5


def test_chunk_at_least_the_sequence_equals_plain_attention_exactly():
    plain = _model("qwen3-qknorm").float()
    dca = _model("qwen3-qknorm", dca={"chunk_size": 48, "local_size": 16}).float()
    dca.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 512, (1, 48))
    with torch.no_grad():
        assert torch.equal(dca(ids).logits, plain(ids).logits)
        caches = plain.new_cache(1, 48), dca.new_cache(1, 48)
        for t0, t1 in ((0, 20), *((t, t + 1) for t in range(20, 48))):
            assert torch.equal(dca(ids[:, t0:t1], cache=caches[1]).logits, plain(ids[:, t0:t1], cache=caches[0]).logits)


@pytest.mark.parametrize("scaling", [
    {"factor": 4.0, "original_max_position_embeddings": 32768},
    {"factor": 8.0, "original_max_position_embeddings": 4096, "beta_fast": 16, "beta_slow": 2},
    {"factor": 4.0, "original_max_position_embeddings": 2048, "mscale": 1.0, "mscale_all_dim": 0.5},
    {"factor": 2.0, "original_max_position_embeddings": 8192, "attention_factor": 1.3, "truncate": False},
])
def test_yarn_frequencies_and_attention_scaling_equal_transformers(scaling):
    from transformers import Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    theta, head_dim = 1e6, 64
    hf_cfg = Qwen2Config(hidden_size=512, num_attention_heads=8, max_position_embeddings=4 * 32768,
                         rope_parameters={"rope_type": "yarn", "rope_theta": theta, **scaling})
    want_freq, want_scale = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg, "cpu")
    ours = Rotary(head_dim, theta, {"rope_type": "yarn", **scaling}, 4096)
    assert torch.equal(ours.inv_freq, want_freq) and ours.attention_factor == pytest.approx(want_scale, abs=0)
    pos = torch.arange(0, 40000, 37)[None]
    cos, sin = Qwen2RotaryEmbedding(hf_cfg)(torch.zeros(1, dtype=torch.float32), pos)
    our_cos, our_sin = ours(pos, 40000, torch.device("cpu"))
    assert (our_cos[:, :, 0] - cos).abs().max() < 1e-6
    half = head_dim // 2  # our sine table carries rotate_half's sign on its first half
    assert (our_sin[:, :, 0, half:] - sin[..., half:]).abs().max() < 1e-6
    assert (our_sin[:, :, 0, :half] + sin[..., :half]).abs().max() < 1e-6


@pytest.mark.parametrize("dca, match", [
    ({"chunk_size": 60, "local_size": 8}, "exceeds the trained context of 64"),
    ({"chunk_size": 8, "local_size": 16}, "local_size <= chunk_size"),
    ({"chunk_size": 0, "local_size": 0}, "local_size <= chunk_size"),
    ({"chunk_size": 16}, "must be"),
    ({"chunk_size": 16.5, "local_size": 4}, "integers"),
])
def test_bad_dca_settings_are_clear_errors(dca, match):
    with pytest.raises(UserError, match=match):
        Config.from_name("qwen2-tiny", max_seq_len=64, dca=dca)


def test_dca_with_learned_positions_is_a_clear_error():
    with pytest.raises(UserError, match="learned position embeddings"):
        Config.from_name("gpt2-tiny", dca={"chunk_size": 64, "local_size": 16})
    with pytest.raises(UserError, match="learned positions"):
        extend_context(Transformer(Config.from_name("gpt2-tiny")), 1024, dca=(128, 32))


def test_extend_context_sets_yarn_and_dca_and_refuses_a_plain_longer_context():
    model = _model("qwen3-qknorm").float()
    with pytest.raises(UserError, match="longer than the model's 64"):
        extend_context(model, 256)
    extend_context(model, 256, yarn=4.0, dca=(48, 16))
    cfg = model.config
    assert cfg.max_seq_len == 256 and cfg.dca == {"chunk_size": 48, "local_size": 16}
    assert cfg.rope_scaling == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    with pytest.raises(UserError, match="exceeds the trained context of 64"):
        extend_context(model, 512, dca=(60, 16))
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 512, (1, 200))).logits).all()
