"""The C decode step (infer/native.py): the same logits and KV cache as the PyTorch forward at every step, for
float32 and block-quantised weights, padded batches through the Engine, and the models it declines."""

from __future__ import annotations

import pytest
import torch

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.infer import Engine, SamplingParams
from gptqwen.infer.native import NativeDecoder, why_not
from gptqwen.infer.quant import quantize
from gptqwen.model import Transformer

pytestmark = pytest.mark.skipif(NativeDecoder.build(Transformer(Config.from_name("qwen3-tiny")).eval()) is None,
                                reason="no C compiler: the native decode step is not available")

CONFIGS = {
    "qwen3-qknorm-gqa": Config.from_name("qwen3-tiny"),
    "qwen2-bias-gqa": Config.from_name("qwen2-tiny"),
    "llama-mha-untied": Config.from_name("qwen2-tiny", qkv_bias=False, n_kv_head=4, tie_embeddings=False),
    "qwen3-yarn": Config.from_name("qwen3-tiny", n_layer=2, max_seq_len=128,
                                   rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                 "original_max_position_embeddings": 32}),
    "gpt2-layernorm-gelu-learned": Config.from_name("gpt2-tiny"),
}


def make_model(cfg: Config, fmt: str | None, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # large enough weights that next-token choices are not near-ties
            if p.dim() > 1:
                p.normal_(0, 0.15)
            else:
                p.uniform_(0.5, 1.5)
    return quantize(model, fmt) if fmt else model


@pytest.mark.parametrize("fmt", [None, "q8_0", "q4_1"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_matches_pytorch_forward(name, fmt):
    cfg = CONFIGS[name]
    model = make_model(cfg, fmt)
    dec = NativeDecoder.build(model)
    assert dec is not None, why_not(model)
    B, L = 3, 9
    ids = torch.randint(0, cfg.vocab_size, (B, L))
    ref_cache, cache = model.new_cache(B, 24), model.new_cache(B, 24)
    with torch.inference_mode():
        model(ids, cache=ref_cache, logits_to_keep=1)
        model(ids, cache=cache, logits_to_keep=1)
        for step in range(6):
            tok = torch.randint(0, cfg.vocab_size, (B,))
            ref = model(tok[:, None], cache=ref_cache, logits_to_keep=1).logits[:, -1]
            got = dec.step(tok, torch.full((B,), L + step), torch.zeros(B, dtype=torch.long), cache)
            assert cache.length == ref_cache.length == L + step + 1
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(cache.k, ref_cache.k, atol=1e-4, rtol=0)
    torch.testing.assert_close(cache.v, ref_cache.v, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, fmt", [("qwen3-qknorm-gqa", None), ("qwen3-qknorm-gqa", "q4_1"),
                                       ("gpt2-layernorm-gelu-learned", None)])
def test_engine_padded_batch_same_as_pytorch_path(name, fmt):
    """Left-padded prompts of different lengths: native and PyTorch decoding pick the same tokens with the same
    log-probs (and the PyTorch path is itself checked against full recomputation in test_engine.py)."""
    cfg = CONFIGS[name]
    model = make_model(cfg, fmt, seed=1)
    prompts = [torch.randint(0, cfg.vocab_size, (n,)).tolist() for n in (17, 4, 11)]
    params = SamplingParams(temperature=0, max_new_tokens=12, logprobs=3, ignore_eos=True)
    fast = Engine(model).generate(prompts, params)
    slow = Engine(model, native=False).generate(prompts, params)
    for a, b in zip(fast, slow):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_sampling_and_stop_strings_unchanged():
    cfg = CONFIGS["qwen2-bias-gqa"]
    model = make_model(cfg, None, seed=2)
    prompt = list(range(5, 25))
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=7, max_new_tokens=20, ignore_eos=True,
                            stop_token_ids=[3])
    a = Engine(model).generate([prompt, prompt[:7]], params)
    b = Engine(model, native=False).generate([prompt, prompt[:7]], params)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


@pytest.mark.parametrize("name, reason", [
    ("gpt1-tiny", "post-norm"), ("qwen3-moe-tiny", "MoE"), ("qwen-tiny", "logn"), ("gpt3-tiny", "banded")])
def test_declines_other_layouts(name, reason):
    model = Transformer(Config.from_name(name)).eval()
    assert NativeDecoder.build(model) is None and reason in why_not(model)


def test_declines_bf16_training_mode_and_wrapped_layers():
    model = Transformer(Config.from_name("qwen3-tiny")).eval()
    assert "float32" in why_not(model.to(torch.bfloat16))
    model = Transformer(Config.from_name("qwen3-tiny"))
    assert "training" in why_not(model.train())
    model.eval().blocks[0].mlp.down.register_forward_hook(lambda *a: None)
    assert "neither" in why_not(model)


def test_full_cache_is_a_user_error():
    model = make_model(CONFIGS["qwen3-qknorm-gqa"], None)
    dec = NativeDecoder.build(model)
    cache = model.new_cache(1, 4)
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3, 4]]), cache=cache, logits_to_keep=1)
        with pytest.raises(UserError, match="does not fit the KV cache"):
            dec.step(torch.tensor([5]), torch.tensor([4]), torch.tensor([0]), cache)


def test_out_of_range_inputs_never_reach_the_c_code():
    model = make_model(CONFIGS["qwen3-qknorm-gqa"], None)
    dec = NativeDecoder.build(model)
    cache = model.new_cache(1, 8)
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]), cache=cache, logits_to_keep=1)
        for tok, pos, start in [(512, 3, 0), (-1, 3, 0), (5, 8, 0), (5, 3, 4)]:
            with pytest.raises(ValueError, match="must lie in"):
                dec.step(torch.tensor([tok]), torch.tensor([pos]), torch.tensor([start]), cache)
        assert cache.length == 3  # nothing written
