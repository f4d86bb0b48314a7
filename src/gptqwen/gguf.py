"""GGUF import: llama.cpp model files → a `Transformer` and a `Tokenizer`.

    from gptqwen.loading import from_pretrained, load_tokenizer   # what most callers want
    model = from_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf")      # dequantised to fp32 (or `dtype=`)
    tok = load_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")         # vocabulary, merges, chat template

The file is read with the `gguf` package (extra `gguf`). Supported architectures: llama, qwen2, qwen3,
gpt2, qwen2moe, qwen3moe; tensor types: every type `gguf.quants.dequantize` handles (with gguf 0.19: F32,
F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants Q2_K…Q6_K, the IQ types, TQ1_0/TQ2_0, MXFP4, NVFP4),
so the common Q4_K_M files (Q4_K, Q5_0, Q6_K, Q8_0 tensors mixed) load; a type it cannot dequantise is a
UserError naming the tensor. The metadata becomes a Hugging Face `config.json` dict and the tensors get
their Hugging Face names (`read_as_hf`), so `gptqwen.loading` fills the model through the HF importer
(`gptqwen.hf`) — one name map per format. Writing GGUF is `gptqwen.gguf_export`.
llama.cpp permutes the rows of llama-architecture Q and K projections (its rope pairs adjacent dims);
we undo that here so the rotate-half rope of the model sees the original layout.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from gptqwen.errors import UserError, require
from gptqwen.tokenizer import Tokenizer

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "gpt2", "qwen2moe", "qwen3moe")
HF_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gpt2": "gpt2",
                 "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}

# GGUF per-layer tensor name -> HF name, for the llama/qwen family (GPT-2 has its own table).
_LLAMA_LAYER = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate", "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
_LLAMA_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Stacked expert tensors [E, out, in] are split into the per-expert keys HF checkpoints use.
_EXPERTS = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}

_GPT2_LAYER = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
               "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
_GPT2_GLOBAL = {"token_embd": "transformer.wte", "position_embd": "transformer.wpe",
                "output_norm": "transformer.ln_f", "output": "lm_head"}
_GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # PyTorch order (rows first), i.e. GGML's dims reversed
    qtype: Any  # gguf.GGMLQuantizationType
    data: np.ndarray  # the raw bytes, uint8 [rows, bytes per row]


@dataclass
class GGUFFile:
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


# GGUF value types (gguf.GGUFValueType): struct format of each scalar type
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file: all metadata (arrays as lists) and memory-mapped tensor bytes.

    A small reader of our own because `gguf.GGUFReader` builds a numpy object per array item and spends
    ~10 s on a 49k-token vocabulary; this one reads the same format in well under a second. Tensor types and
    their block sizes come from the `gguf` package.
    """
    gguf = require("gguf", "gguf", "Reading GGUF files")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file '{path}' does not exist; pass the path of a .gguf model file")
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    mv = memoryview(buf)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        value = struct.unpack_from("<" + fmt, mv, pos)
        pos += struct.calcsize("<" + fmt)
        return value[0]

    def string() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return bytes(mv[pos - n:pos]).decode("utf-8", errors="replace")

    def value(kind: int):
        if kind in _SCALARS:
            return take(_SCALARS[kind])
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            item, n = take("I"), take("Q")
            return [value(item) for _ in range(n)]
        raise ValueError(f"unknown metadata value type {kind}")

    try:
        if bytes(mv[:4]) != b"GGUF":
            raise ValueError("bad magic number")
        pos = 4
        version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (only 2 and 3, little-endian, are supported)")
        meta = {}
        for _ in range(n_kv):
            key = string()
            meta[key] = value(take("I"))
        infos = []
        for _ in range(n_tensors):
            name, n_dims = string(), take("I")
            dims = [take("Q") for _ in range(n_dims)]
            infos.append((name, dims, take("I"), take("Q")))
        align = int(meta.get("general.alignment", 32))
        start = (pos + align - 1) // align * align
        tensors = []
        for name, dims, kind, offset in infos:
            try:
                qtype = gguf.GGMLQuantizationType(kind)
            except ValueError:
                raise UserError(f"GGUF tensor '{name}' has unknown type id {kind}; the file is newer than "
                                "the installed gguf package") from None
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            rows = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
            row_bytes = dims[0] // block * size
            data = buf[start + offset:start + offset + rows * row_bytes]
            if data.size != rows * row_bytes:
                raise ValueError(f"tensor '{name}' runs past the end of the file")
            tensors.append(GGUFTensor(name, tuple(int(d) for d in reversed(dims)), qtype,
                                      data.view(np.ndarray).reshape(rows, row_bytes)))
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not a readable GGUF file ({e}); re-download or re-convert it") from e
    return GGUFFile(meta, tensors)


def _arch(meta: dict[str, Any], path: str | Path) -> str:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise UserError(f"GGUF architecture '{arch}' in '{path}' is not supported; "
                        f"supported: {', '.join(SUPPORTED_ARCHS)}")
    return arch


def hf_config(meta: dict[str, Any], tensor_rows: dict[str, int]) -> dict[str, Any]:
    """A Hugging Face `config.json` dict for a GGUF file's metadata (`tensor_rows`: name -> rows)."""
    arch = meta["general.architecture"]

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    vocab = get("vocab_size") or tensor_rows["token_embd.weight"]
    n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
    tied = "output.weight" not in tensor_rows
    if arch == "gpt2":
        return {"model_type": "gpt2", "vocab_size": vocab, "n_embd": n_embd, "n_head": n_head,
                "n_layer": int(get("block_count")), "n_positions": int(get("context_length")),
                "n_inner": int(get("feed_forward_length", 4 * n_embd)),
                "layer_norm_epsilon": float(get("attention.layer_norm_epsilon", 1e-5)),
                "activation_function": "gelu_new", "tie_word_embeddings": tied,
                "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
                "eos_token_id": meta.get("tokenizer.ggml.eos_token_id")}
    head_dim = get("attention.key_length") or get("rope.dimension_count") or n_embd // n_head
    cfg: dict[str, Any] = {
        "model_type": HF_MODEL_TYPE[arch], "vocab_size": int(vocab), "hidden_size": n_embd,
        "intermediate_size": int(get("feed_forward_length", 0) or 0), "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": n_head, "num_key_value_heads": int(get("attention.head_count_kv", n_head)),
        "head_dim": int(head_dim), "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)), "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    if arch == "llama":  # qwen2 always has Q/K/V biases, qwen3 never; llama says so in its config
        cfg["attention_bias"] = "blk.0.attn_q.bias" in tensor_rows
    scaling = get("rope.scaling.type")
    if scaling in ("yarn", "linear") and get("rope.scaling.factor"):
        cfg["rope_scaling"] = {"rope_type": scaling, "factor": float(get("rope.scaling.factor"))}
        if get("rope.scaling.original_context_length"):
            cfg["rope_scaling"]["original_max_position_embeddings"] = int(get("rope.scaling.original_context_length"))
    elif scaling not in (None, "none"):
        raise UserError(f"GGUF rope scaling '{scaling}' is not supported; supported: yarn, linear")
    if arch in ("qwen2moe", "qwen3moe"):
        cfg.update(num_experts=int(get("expert_count")), num_experts_per_tok=int(get("expert_used_count")),
                   moe_intermediate_size=int(get("expert_feed_forward_length")),
                   decoder_sparse_step=1, mlp_only_layers=[],
                   norm_topk_prob=bool(get("expert_weights_norm", arch == "qwen3moe")))
        if arch == "qwen2moe":
            cfg["shared_expert_intermediate_size"] = int(get("expert_shared_feed_forward_length", 0) or 0)
    return cfg


def _unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave of Q/K (pairs (2i, 2i+1) back to (i, i + d/2))."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's per-head row interleave of Q/K for the llama architecture (the inverse of the above)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _name_maps(arch: str) -> tuple[dict[str, str], dict[str, str], str]:
    if arch == "gpt2":
        return _GPT2_LAYER, _GPT2_GLOBAL, "transformer.h"
    return _LLAMA_LAYER, _LLAMA_GLOBAL, "model.layers"


def _hf_name(arch: str, name: str) -> str | None:
    layer_map, global_map, prefix = _name_maps(arch)
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    if m:
        layer, base, kind = m.groups()
        return f"{prefix}.{layer}.{layer_map[base]}.{kind}" if base in layer_map else None
    base, _, kind = name.rpartition(".")
    return f"{global_map[base]}.{kind}" if base in global_map else None


def gguf_name(arch: str, hf_name: str) -> str:
    """The GGUF tensor name of a Hugging Face tensor name (the same tables, read the other way)."""
    layer_map, global_map, prefix = _name_maps(arch)
    base, _, kind = hf_name.rpartition(".")
    m = re.fullmatch(re.escape(prefix) + r"\.(\d+)\.(.+)", base)
    table, key = (layer_map, m.group(2)) if m else (global_map, base)
    found = [g for g, h in table.items() if h == key]
    if not found:
        raise KeyError(f"no GGUF name for '{hf_name}' ({arch})")
    return f"blk.{m.group(1)}.{found[0]}.{kind}" if m else f"{found[0]}.{kind}"


def hf_tensors(f: GGUFFile, cfg: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every tensor of the file, dequantised, renamed to its Hugging Face name, cast to `dtype`."""
    gguf = require("gguf", "gguf", "Reading GGUF files")
    arch = {v: k for k, v in HF_MODEL_TYPE.items()}[cfg["model_type"]]
    out: dict[str, torch.Tensor] = {}
    for t in f.tensors:
        w = _dequantize(gguf, t).reshape(t.shape)
        m = re.fullmatch(r"blk\.(\d+)\.(ffn_\w+_exps)\.weight", t.name)
        if m and m.group(2) in _EXPERTS:
            for j in range(w.shape[0]):
                key = f"model.layers.{m.group(1)}.mlp.experts.{j}.{_EXPERTS[m.group(2)]}.weight"
                out[key] = _to_torch(w[j], dtype)
            continue
        name = _hf_name(arch, t.name)
        if name is None:
            if t.name.startswith("rope_freqs"):  # llama3 rope factors: not part of our supported archs
                raise UserError(f"GGUF tensor '{t.name}' (llama-3 rope frequency factors) is not supported")
            raise UserError(f"GGUF tensor '{t.name}' is not known for architecture '{arch}'; the file may "
                            "be of a variant gptqwen does not support")
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            w = _unpermute_rope_rows(w, cfg["num_attention_heads"])
        elif arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            w = _unpermute_rope_rows(w, cfg["num_key_value_heads"])
        elif name.endswith("shared_expert_gate.weight") and w.ndim == 1:
            w = w[None, :]
        elif arch == "gpt2" and name.endswith(_GPT2_CONV1D):
            w = w.T  # GGUF stores nn.Linear (out, in); HF GPT-2 uses Conv1D (in, out)
        out[name] = _to_torch(w, dtype)
    if cfg.get("tie_word_embeddings") is False and "lm_head.weight" not in out:
        raise UserError("GGUF file has no output tensor and does not tie embeddings; the file is incomplete")
    return out


def _dequantize(gguf, t: GGUFTensor) -> np.ndarray:
    """The tensor's values as float32, by the `gguf` package; a UserError for a type it cannot dequantise."""
    try:
        return gguf.quants.dequantize(t.data, t.qtype)
    except NotImplementedError:
        raise UserError(f"GGUF tensor '{t.name}' has type {t.qtype.name}, which the installed gguf package "
                        f"({_gguf_version()}) cannot dequantise; upgrade gguf (pip install -U gguf) or re-quantise "
                        "the model to a common type such as Q4_K_M or Q8_0") from None


def _gguf_version() -> str:
    try:
        return version("gguf")
    except PackageNotFoundError:  # a source checkout on sys.path
        return "unknown version"


def _to_torch(w: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    # F32 tensors are read-only views of the mapped file: copy them (and everything else) into torch memory
    return torch.from_numpy(np.array(w, dtype=np.float32, order="C")).to(dtype)


def read_as_hf(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A GGUF file as a Hugging Face `config.json` dict and HF-named tensors, dequantised to `dtype`."""
    f = read_gguf(path)
    _arch(f.metadata, path)
    try:
        cfg = hf_config(f.metadata, {t.name: t.shape[0] for t in f.tensors})
    except (KeyError, TypeError, ValueError) as e:  # a required key or tensor missing, or a value of the wrong kind
        raise UserError(f"GGUF file '{path}' lacks model metadata or tensors its architecture needs ({e!r}); "
                        "re-convert it with llama.cpp's converter") from None
    return cfg, hf_tensors(f, cfg, dtype)


# How each `tokenizer.ggml.pre` splits text before BPE (llama.cpp's pre-tokenizer names).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
               "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}


def _pre_tokenizer(pre: str):
    if pre in _PRE_SPLITS:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # GPT-2's split, with every digit on its own (as SmolLM's tokenizer.json does)
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def tokenizer_from_metadata(meta: dict[str, Any], path: str | Path = "<gguf>"):
    """Build our `Tokenizer` from GGUF tokenizer metadata (byte-level BPE vocabularies only)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UserError(f"GGUF tokenizer type '{kind}' in '{path}' is not supported; only byte-level BPE "
                        "('gpt2': GPT-2, Llama-3, Qwen, SmolLM vocabularies) is")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    pre = meta.get("tokenizer.ggml.pre", "default")
    # Llama-3 style vocabularies look a whole pre-token up before merging (as their tokenizer.json says).
    backend = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                     ignore_merges=_PRE_SPLITS.get(pre) is _LLAMA3_SPLIT))
    backend.pre_tokenizer = _pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    # llama.cpp token types: 3 = control (special, e.g. <|im_end|>), 4 = user-defined (whole, not special,
    # e.g. Qwen's <think>). Both must be matched whole in text; only control tokens are skipped on decode.
    types = list(meta.get("tokenizer.ggml.token_type", []))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types) if k == 3])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4])
    def role(key: str) -> str | None:
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    return Tokenizer.from_hf(backend, chat_template=meta.get("tokenizer.chat_template"), eos_token=role("eos"),
                             bos_token=role("bos"), pad_token=role("padding"))


def read_tokenizer(path: str | Path) -> Tokenizer:
    """The `Tokenizer` a GGUF file describes, with the chat template stored in the file."""
    return tokenizer_from_metadata(read_gguf(path).metadata, path)
