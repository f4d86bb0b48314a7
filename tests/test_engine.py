"""The Engine: cached decoding equals full recomputation for every family, batching with left padding,
sampling controls, stop handling, streaming, log-probs, guards; greedy parity with transformers.generate."""

from __future__ import annotations

import math

import pytest
import torch

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.infer import Engine, SamplingParams
from gptqwen.model import Transformer

FAMILIES = {
    "dense-gpt2": Config.from_name("gpt2-tiny", n_layer=2, n_embd=64),
    "gqa-qwen2": Config.from_name("qwen2-tiny"),
    "local-band-gpt3": Config.from_name("gpt3-tiny", n_layer=2, local_band=16),
    "moe-qwen2": Config.from_name("qwen2-moe-tiny"),
    "moe-qwen3": Config.from_name("qwen3-moe-tiny"),
    "yarn-qwen3": Config.from_name("qwen3-tiny", n_layer=2, max_seq_len=128,
                                   rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                 "original_max_position_embeddings": 32}),
}


def random_model(cfg: Config, seed: int = 0) -> Transformer:
    """A random model with weights large enough that its next-token choices are not ties."""
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    return model


def full_logprobs(model: Transformer, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_decode_matches_full_recompute(family):
    cfg = FAMILIES[family]
    model = random_model(cfg)
    engine = Engine(model)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in (20, 9)]
    params = SamplingParams(temperature=0, max_new_tokens=16, logprobs=5, ignore_eos=True)
    results = engine.generate(prompts, params)  # one batch, the short prompt left-padded
    for prompt, r in zip(prompts, results):
        assert len(r.token_ids) == 16 and r.finish_reason == "length"
        ref = full_logprobs(model, prompt + r.token_ids)
        for t, (tok, lp, top) in enumerate(zip(r.token_ids, r.logprobs, r.top_logprobs)):
            row = ref[len(prompt) - 1 + t]
            assert tok == int(row.argmax())
            assert lp == pytest.approx(float(row[tok]), abs=1e-4)
            for i, v in top:
                assert v == pytest.approx(float(row[i]), abs=1e-4)


def test_batch_equals_single_and_cache_is_reused():
    cfg = FAMILIES["gqa-qwen2"]
    engine = Engine(random_model(cfg))
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [42]]
    p = SamplingParams(temperature=0, max_new_tokens=8, ignore_eos=True)
    batch = [r.token_ids for r in engine.generate(prompts, p)]
    cache = engine._cache
    engine.generate(prompts, p.replace(max_new_tokens=4))
    assert engine._cache is cache  # a smaller request reuses the preallocated cache
    assert batch == [engine.generate([q], p)[0].token_ids for q in prompts]


def test_seeded_sampling_is_reproducible_and_independent_of_batch():
    cfg = FAMILIES["gqa-qwen2"]
    engine = Engine(random_model(cfg))
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, min_p=0.01, seed=7, max_new_tokens=12, ignore_eos=True)
    a = engine.generate([[1, 2, 3]], p)[0].token_ids
    b = engine.generate([[9, 9], [1, 2, 3]], [p.replace(seed=1), p])[1].token_ids
    assert a == b
    assert engine.generate([[1, 2, 3]], p.replace(seed=8))[0].token_ids != a


def test_sampling_filters():
    from gptqwen.infer.sampling import Sampler

    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(200, 1)

    def drawn(**kw) -> set[int]:
        ps = [SamplingParams(temperature=1.0, seed=i, **kw) for i in range(200)]
        return set(Sampler(ps, 5, torch.device("cpu"))(logits).tokens.tolist())

    assert drawn(top_k=2) == {0, 1}
    assert drawn(top_p=0.5) == {0}  # p(0) = 0.64 already covers 0.5
    assert drawn(min_p=0.3) == {0, 1}  # p(1)/p(0) = e^-1 = 0.37; p(2)/p(0) = 0.14
    assert len(drawn()) >= 4
    # greedy with penalties: token 0 seen in the output -> presence penalty pushes it below token 1
    s = Sampler([SamplingParams(temperature=0, presence_penalty=2.0)], 5, torch.device("cpu"))
    s.observe_prompt([[3]])
    s.observe(torch.tensor([0]))
    assert s(logits[:1]).tokens.item() == 1
    s = Sampler([SamplingParams(temperature=0, repetition_penalty=2.0)], 5, torch.device("cpu"))
    s.observe_prompt([[0]])  # 4/2 = 2 < 3
    assert s(logits[:1]).tokens.item() == 1


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                 dict(min_p=1.0), dict(repetition_penalty=0), dict(max_new_tokens=0),
                                 dict(presence_penalty=3), dict(logprobs=99), dict(temperature=math.nan),
                                 dict(stop=[""])])
def test_invalid_sampling_values(bad):
    with pytest.raises(UserError, match="invalid|non-empty"):
        SamplingParams(**bad)


def test_context_guards():
    cfg = Config.from_name("qwen2-tiny", max_seq_len=32)
    engine = Engine(random_model(cfg))
    with pytest.raises(UserError, match="context window of 32"):
        engine.generate([list(range(40))], SamplingParams(max_new_tokens=4))
    r = engine.generate([list(range(40))], SamplingParams(max_new_tokens=4, truncate_prompt=True,
                                                          temperature=0, ignore_eos=True))[0]
    assert r.prompt_tokens == 28 and len(r.token_ids) == 4
    r = engine.generate([list(range(30))], SamplingParams(max_new_tokens=50, temperature=0, ignore_eos=True))[0]
    assert len(r.token_ids) == 2 and r.finish_reason == "length"  # clipped to the context
    with pytest.raises(UserError, match="out of range"):
        engine.generate([[cfg.vocab_size + 5]])
    with pytest.raises(UserError, match="empty"):
        engine.generate([[]])


class _ByteTokenizer:
    """A tokenizer over raw bytes (ids 0..255) plus an end token 256: multi-byte UTF-8 spans tokens."""

    eos_id = 256
    stop_ids = {256}
    special_tokens = {"<eos>": 256}

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return list(text.encode())

    def decode_stream(self):
        import codecs

        class Stream:
            def __init__(self) -> None:
                self.d = codecs.getincrementaldecoder("utf-8")(errors="replace")

            def step(self, i: int) -> str:
                return self.d.decode(bytes([i]) if i < 256 else b"")

            def finish(self) -> str:
                return self.d.decode(b"", final=True)

        return Stream()


def _scripted_engine(script: bytes, stop_after: bool = True) -> Engine:
    """An engine whose model writes `script` byte by byte (then the end token), via an output bias."""
    cfg = Config.from_name("qwen2-tiny", vocab_size=257, max_seq_len=128)
    model = random_model(cfg)
    seq = list(script) + ([256] if stop_after else [])

    class Scripted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.config = model, cfg

        def new_cache(self, *a, **k):
            return model.new_cache(*a, **k)

        def forward(self, ids, position_ids=None, **kw):
            out = model(ids, position_ids=position_ids, **kw)
            nxt = seq[min(int(position_ids[0, -1]), len(seq) - 1)]  # one-token prompt: position p writes seq[p]
            out.logits[:, -1, nxt] += 1000.0
            return out

    return Engine(Scripted(), _ByteTokenizer())


def test_streaming_never_breaks_utf8_and_stop_strings_hold_back():
    text = "héllo wörld — 你好 END tail"
    engine = _scripted_engine(text.encode())
    p = SamplingParams(temperature=0, max_new_tokens=100, stop=["END"])
    pieces = list(engine.stream([65], p))
    assert "".join(pieces) == "héllo wörld — 你好 "
    assert all("\ufffd" not in s for s in pieces) and not any("E" in s for s in pieces)
    r = engine.generate([[65]], p)[0]
    assert r.text == "héllo wörld — 你好 " and r.finish_reason == "stop"
    r = engine.generate([[65]], SamplingParams(temperature=0, max_new_tokens=100))[0]
    assert r.text == text and r.finish_reason == "stop" and r.token_ids[-1] == 256  # stop token: not in text


def test_hf_checkpoint_greedy_matches_transformers_generate(tmp_path):
    transformers = pytest.importorskip("transformers")
    from gptqwen.config import config_to_hf
    from gptqwen.loading import from_pretrained

    for name in ("qwen3-tiny", "gpt2-tiny"):
        cfg = Config.from_name(name, n_layer=2)
        d = config_to_hf(cfg)
        mt = d.pop("model_type")
        d.pop("architectures", None)
        torch.manual_seed(0)
        ref = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(mt, **d)).eval()
        with torch.no_grad():
            for p in ref.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.15)
        ref.save_pretrained(tmp_path / name)
        engine = Engine(from_pretrained(tmp_path / name))
        prompts = [[3, 14, 15, 92, 65], [35, 89, 79, 32, 38, 46, 26]]
        ours = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True))
        for prompt, r in zip(prompts, ours):
            ids = torch.tensor([prompt])
            theirs = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)
            assert r.token_ids == theirs[0, len(prompt):].tolist(), name


def test_cli_rejects_bad_thread_count(capsys):
    from gptqwen.cli import main

    assert main(["generate", "--model", "qwen3-tiny", "--prompt", "hi", "--threads", "0"]) == 2
    assert "--threads 0 is invalid" in capsys.readouterr().err


def test_stop_strings_hold_back_with_a_real_tokenizer():
    """The same hold-back through the real `Tokenizer.decode_stream` of a byte-level BPE: é, ö, — and 你好 are
    split over byte tokens, " E" is one token (so "END" starts inside it), and "EN" of ENTRY is a false alarm that
    must be held back and then let through."""
    from gptqwen.finetune.synthetic import demo_tokenizer

    tok = demo_tokenizer(400)
    text = "the king loves the queen. héllo ENTRY wörld — 你好 END tail"
    script = tok.encode(text) + [tok.eos_id]
    assert [tok.token_bytes(i) for i in tok.encode(" END")] == [b" E", b"N", b"D"] and len(tok.encode("é")) == 2
    model = random_model(Config.from_name("qwen2-tiny", vocab_size=tok.vocab_size, max_seq_len=128))

    def write_script(module, args, kwargs, out):  # the token at position p is followed by script[p]
        out.logits[:, -1, script[min(int(kwargs["position_ids"][0, -1]), len(script) - 1)]] += 1000.0
        return out

    model.register_forward_hook(write_script, with_kwargs=True)
    engine = Engine(model, tok, native=False)  # the native C step would bypass the forward hook
    for stop, want in [("END", "the king loves the queen. héllo ENTRY wörld — 你好 "),  # cut inside " E"
                       ("een.", "the king loves the qu")]:  # cut inside " queen"
        p = SamplingParams(temperature=0, max_new_tokens=100, stop=[stop])
        pieces = list(engine.stream([script[0]], p))
        shown = ["".join(pieces[:i + 1]) for i in range(len(pieces))]
        assert shown[-1] == want and all(want.startswith(s) for s in shown)  # nothing shown is taken back
        assert not any("\ufffd" in s or s.endswith(tuple(stop[:n] for n in range(1, len(stop)))) for s in shown)
        r = engine.generate([[script[0]]], p)[0]
        assert (r.text, r.finish_reason) == (want, "stop")
    r = engine.generate([[script[0]]], SamplingParams(temperature=0, max_new_tokens=100))[0]
    assert r.text == text and r.finish_reason == "stop" and r.token_ids == script  # eos ends it, not in the text
