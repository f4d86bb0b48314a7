"""GGUF export: a `Transformer` and its `Tokenizer` → one llama.cpp model file.

    gptqwen export runs/qwen3-shakespeare --gguf qwen3-shakespeare.gguf --type q8_0
    from gptqwen.gguf_export import export_gguf
    export_gguf(model, tokenizer, "out.gguf", qtype="f16")

Layouts: llama, qwen2, qwen3, gpt2, and the MoE layouts qwen2_moe / qwen3_moe when every layer is MoE and the
router normalisation is the one llama.cpp applies (a model whose `hf_model_type` is one of them and that
`config_to_hf` can express). The file carries the architecture metadata, the tokenizer (vocabulary, merges,
token types, special ids, the pre-tokenizer's llama.cpp name) and the chat template as Jinja (the shipped
twins of the natively rendered Qwen formats, `hf.chat_template_jinja`). Tensors get llama.cpp's names through
the same tables the importer (`gptqwen.gguf`) reads, with the llama Q/K rows interleaved as llama.cpp's rope
expects. Types (`--type`): f32, f16 (default), bf16, q8_0, q4_1 — vectors stay F32; with q4_1 the output
matrix (the embedding when tied) is Q8_0, as llama.cpp's own quantiser keeps the head at higher precision;
a matrix whose rows are not a multiple of the block size is F16, as llama.cpp's converter does. Quantisation
is `gguf.quants.quantize`, which writes the same blocks llama.cpp does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptqwen.config import config_to_hf
from gptqwen.errors import UserError, require
from gptqwen.gguf import _LLAMA3_SPLIT, _QWEN2_SPLIT, gguf_name, permute_rope_rows
from gptqwen.hf import chat_template_jinja, weight_rules
from gptqwen.tokenizer import Tokenizer
from gptqwen.tokenizer.backends import onig_pattern
from gptqwen.tokenizer.presets import CL100K_PATTERN, GPT2_PATTERN, QWEN_PATTERN
from gptqwen.utils import fsync_dir

EXPORT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_1")
GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gpt2": "gpt2",  # HF model type -> GGUF
             "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}
# llama.cpp renormalises the top-k router weights for qwen3moe and never for qwen2moe, whatever the file says
_MOE_TOPK_NORM = {"qwen2moe": False, "qwen3moe": True}
# Split regex -> the `tokenizer.ggml.pre` name under which llama.cpp (and our importer) uses the same split.
_PRE_NAMES = {GPT2_PATTERN: "gpt-2", QWEN_PATTERN: "qwen2", _QWEN2_SPLIT: "qwen2", CL100K_PATTERN: "llama-bpe",
              _LLAMA3_SPLIT: "llama-bpe"}


def export_gguf(model: torch.nn.Module, tokenizer: Tokenizer, path: str | os.PathLike, qtype: str = "f16") -> dict:
    """Write `model` (with `.config`) and `tokenizer` as a GGUF file at `path`, atomically; returns a summary
    (`path`, `arch`, `type`, `bytes`, `tensor_types`: how many tensors of each GGUF type)."""
    gguf = require("gguf", "gguf", "Writing GGUF files")
    if qtype not in EXPORT_TYPES:
        raise UserError(f"unknown GGUF export type '{qtype}'; choose one of {', '.join(EXPORT_TYPES)}")
    cfg = model.config
    mt = cfg.hf_model_type
    if mt not in GGUF_ARCH:
        raise UserError(f"model '{cfg.name}' has the '{mt}' layout, which gptqwen cannot export to GGUF; exportable "
                        f"layouts: {', '.join(GGUF_ARCH)} (export a Hugging Face folder instead: gptqwen export SRC OUT)")
    config_to_hf(cfg)  # a UserError for a model its layout cannot express (e.g. GPT-3's banded attention)
    if tokenizer is None:
        raise UserError(f"model '{cfg.name}' has no tokenizer, and a GGUF file must carry one; export a run folder, "
                        "a Hugging Face folder with tokenizer.json, or a .gguf file")
    arch = GGUF_ARCH[mt]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(cfg.name)
        w.add_file_type(_file_type(gguf, qtype))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_arch(w, arch, cfg)
        _add_tokenizer(w, tokenizer, cfg.vocab_size, gguf)
        counts = _add_tensors(w, model, arch, qtype, gguf)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb") as f:  # durable before it replaces anything (the HF writer does the same)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(path), "arch": arch, "type": qtype, "bytes": path.stat().st_size, "tensor_types": counts}


def _file_type(gguf, qtype: str) -> Any:
    f = gguf.LlamaFileType
    return {"f32": f.ALL_F32, "f16": f.MOSTLY_F16, "bf16": f.MOSTLY_BF16, "q8_0": f.MOSTLY_Q8_0, "q4_1": f.MOSTLY_Q4_1}[qtype]


def _add_arch(w, arch: str, cfg) -> None:
    """The `{arch}.*` keys llama.cpp reads (and `gguf.hf_config` reads back)."""
    common = [(w.add_context_length, cfg.max_seq_len), (w.add_embedding_length, cfg.n_embd),
              (w.add_block_count, cfg.n_layer), (w.add_feed_forward_length, cfg.intermediate_size),
              (w.add_head_count, cfg.n_head), (w.add_vocab_size, cfg.vocab_size)]
    if arch == "gpt2":
        for add, value in [*common, (w.add_layer_norm_eps, cfg.norm_eps)]:
            add(value)
        return
    for add, value in [*common, (w.add_head_count_kv, cfg.n_kv_head), (w.add_layer_norm_rms_eps, cfg.norm_eps),
                       (w.add_rope_freq_base, cfg.rope_theta), (w.add_key_length, cfg.head_dim),
                       (w.add_value_length, cfg.head_dim), (w.add_rope_dimension_count, cfg.head_dim)]:
        add(value)
    if arch in _MOE_TOPK_NORM:
        _add_moe(w, arch, cfg)
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in ("yarn", "linear"):
        w.add_string(f"{arch}.rope.scaling.type", kind)
        w.add_rope_scaling_factor(float(scaling["factor"]))
        if scaling.get("original_max_position_embeddings"):
            w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    elif kind != "default":
        raise UserError(f"model '{cfg.name}' uses '{kind}' rope scaling, which gptqwen cannot write to GGUF "
                        "(yarn and linear it can)")


def _add_moe(w, arch: str, cfg) -> None:
    if cfg.mlp_only_layers or cfg.decoder_sparse_step != 1:
        raise UserError(f"model '{cfg.name}' mixes dense and MoE layers, which a GGUF {arch} file cannot describe")
    if cfg.norm_topk_prob != _MOE_TOPK_NORM[arch]:
        raise UserError(f"model '{cfg.name}' has norm_topk_prob={cfg.norm_topk_prob}, but llama.cpp runs {arch} "
                        f"with {_MOE_TOPK_NORM[arch]}; it would compute another model")
    w.add_expert_count(cfg.n_experts)
    w.add_expert_used_count(cfg.n_experts_per_tok)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_expert_weights_norm(cfg.norm_topk_prob)
    if arch == "qwen2moe":
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)


def _add_tokenizer(w, tok: Tokenizer, n_rows: int, gguf) -> None:
    """Byte-level BPE as llama.cpp's 'gpt2' tokenizer model: one token string and type per embedding row."""
    doc = json.loads(tok.to_tokenizers().to_str())
    model = doc["model"]
    if model.get("type") != "BPE" or tok.vocab_size > n_rows:
        raise UserError(f"the tokenizer ({model.get('type')}, {tok.vocab_size} ids) cannot go into a GGUF file for "
                        f"this model ({n_rows} embedding rows): byte-level BPE with at most one id per row is needed")
    T = gguf.TokenType
    tokens, types = [f"[PAD{i}]" for i in range(n_rows)], [T.UNUSED] * n_rows  # rows no token uses, as llama.cpp pads
    for text, i in model["vocab"].items():  # a [PADn] row read from a GGUF file stays unused
        tokens[i], types[i] = text, T.UNUSED if text == f"[PAD{i}]" else T.NORMAL
    for added in doc.get("added_tokens", []):  # control tokens; added tokens that are text (Qwen's <think>)
        tokens[added["id"]] = added["content"]
        types[added["id"]] = T.CONTROL if added["special"] else T.USER_DEFINED
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_name(doc.get("pre_tokenizer")))
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for add, token_id in ((w.add_bos_token_id, tok.bos_id), (w.add_eos_token_id, tok.eos_id),
                          (w.add_pad_token_id, tok.pad_id)):
        if token_id is not None:
            add(token_id)
    w.add_add_bos_token(False)  # our tokenizers never prepend one; llama.cpp would for some pre-tokenizers
    template = chat_template_jinja(tok.chat_template)
    if template:
        w.add_chat_template(template)


def _pre_name(pre: dict | None) -> str:
    """llama.cpp's name for the tokenizer's split rule (a UserError for one it does not know)."""
    parts = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # ByteLevel's own regex is GPT-2's
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"  # GPT-2's split with every digit on its own
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = parts[0].get("pattern", {}).get("Regex")
        for pattern, name in _PRE_NAMES.items():
            if regex in (pattern, onig_pattern(pattern)):
                return name
    raise UserError(f"the tokenizer splits text with a rule llama.cpp does not know ({json.dumps(pre)[:200]}); "
                    "GGUF export supports the GPT-2, Qwen2, Llama-3/cl100k and SmolLM splits")


def _add_tensors(w, model: torch.nn.Module, arch: str, qtype: str, gguf) -> dict[str, int]:
    """Every weight under its GGUF name and type; returns how many tensors of each type were written."""
    cfg, state = model.config, model.state_dict()
    counts: dict[str, int] = {}
    for rule in weight_rules(cfg):
        t = state[rule.ours].detach().to("cpu", torch.float32)
        if rule.stacked:  # experts stay stacked [E, out, in]: w_gate_up holds gate then up along `out`
            layer = rule.ours.split(".")[1]
            names = ["ffn_gate_exps", "ffn_up_exps"] if rule.ours.endswith("w_gate_up") else ["ffn_down_exps"]
            named = zip((f"blk.{layer}.{n}.weight" for n in names), t.split(list(rule.sizes), dim=1))
        else:  # GGUF keeps nn.Linear's (out, in) layout, as our weights are: GPT-2's Conv1D transpose is HF's alone
            parts = t.split(list(rule.sizes)) if len(rule.theirs) > 1 else [t]
            named = ((gguf_name(arch, h), part) for h, part in zip(rule.theirs, parts))
        for name, part in named:
            a = part.numpy()
            if name.endswith("ffn_gate_inp_shexp.weight"):
                a = a[0]  # HF's [1, n_embd] gate of the shared expert is a vector in llama.cpp
            if arch == "llama" and name.endswith(("attn_q.weight", "attn_q.bias")):
                a = permute_rope_rows(a, cfg.n_head)
            elif arch == "llama" and name.endswith(("attn_k.weight", "attn_k.bias")):
                a = permute_rope_rows(a, cfg.n_kv_head)
            kind = _tensor_type(name, a.shape, qtype, cfg.tie_embeddings, gguf)
            w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(a), kind), raw_dtype=kind)
            counts[kind.name] = counts.get(kind.name, 0) + 1
    return counts


def _tensor_type(name: str, shape: tuple[int, ...], qtype: str, tied: bool, gguf):
    Q = gguf.GGMLQuantizationType
    if len(shape) == 1:
        return Q.F32
    kind = Q[qtype.upper()]
    head = name == "output.weight" or (tied and name == "token_embd.weight")
    if kind == Q.Q4_1 and head:
        kind = Q.Q8_0
    if shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
        return Q.F16
    return kind
