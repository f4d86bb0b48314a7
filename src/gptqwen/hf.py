"""Hugging Face checkpoint import/export: config.json + safetensors (sharded too), logit parity with transformers.

    from gptqwen.loading import from_pretrained               # builds the model; this module moves tensors
    model = from_pretrained("path/to/Qwen3-0.6B")
    save_pretrained(model, "out/", tokenizer=tok)             # loadable by transformers' Auto* classes

The writer targets every reader people use: config.json carries transformers 5's `rope_parameters` and the
top-level `rope_theta`/`rope_scaling`/`torch_dtype` that transformers 4.x and vLLM read; tokenizer_config.json
carries the chat template as Jinja (`chat_template_jinja`: the project's own Jinja twins of the natively
rendered Qwen3 / Qwen2.5 formats), for `apply_chat_template`, vLLM and llama.cpp's converter. Qwen (v1)
checkpoints have no class in transformers (they needed Qwen's remote code): they are written for this
project only, and the export says so (a warning and a README.md in the folder).

Model types: openai-gpt, gpt2, qwen (v1 remote-code names), qwen2, qwen2_moe, qwen3, qwen3_moe, llama.
Each of our parameters maps to one or more HF tensors through a `Rule` (rename, concatenate, transpose the GPT
Conv1D layout, stack per-expert tensors); the same rules drive both directions. Loading is lazy: tensors are
read one parameter at a time from memory-mapped files into a model built on the meta device.
This module never builds a model (that is `gptqwen.loading`): the reader fills any module whose parameter
names follow `weight_rules`, the writer takes any module with `.config` and `.state_dict()`, so `model` may
call `save_pretrained` here without an import cycle.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gptqwen.config import SUPPORTED_MODEL_TYPES, Config, config_from_hf, config_to_hf
from gptqwen.errors import UserError
from gptqwen.tokenizer.chat import chat_template_jinja
from gptqwen.utils import atomic_dir, atomic_write

# tensors some checkpoints carry that are buffers, not weights
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq", "position_ids")


@dataclass(frozen=True)
class Rule:
    """Our parameter `ours` = HF tensors `theirs`, concatenated on dim 0 (sizes given) and, for experts,
    stacked per expert (`stacked`: groups of len(sizes) keys); `transpose` for GPT's Conv1D (in, out) layout."""

    ours: str
    theirs: tuple[str, ...]
    sizes: tuple[int, ...] = ()
    transpose: bool = False
    stacked: bool = False


def _gpt_rules(cfg: Config) -> list[Rule]:
    gpt1 = cfg.hf_model_type == "openai-gpt"
    p = "transformer."
    rules = [Rule("wte.weight", (p + ("tokens_embed" if gpt1 else "wte") + ".weight",)),
             Rule("wpe.weight", (p + ("positions_embed" if gpt1 else "wpe") + ".weight",))]
    for i in range(cfg.n_layer):
        h, b = f"{p}h.{i}.", f"blocks.{i}."
        for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.qkv", "attn.c_attn"),
                             ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            conv = not ours.startswith("ln")
            rules += [Rule(b + ours + ".weight", (h + theirs + ".weight",), transpose=conv),
                      Rule(b + ours + ".bias", (h + theirs + ".bias",))]
    if cfg.pre_norm:
        rules += [Rule("ln_f.weight", (p + "ln_f.weight",)), Rule("ln_f.bias", (p + "ln_f.bias",))]
    return rules


def _qwen1_rules(cfg: Config) -> list[Rule]:
    p, inter = "transformer.", cfg.intermediate_size
    rules = [Rule("wte.weight", (p + "wte.weight",)), Rule("ln_f.weight", (p + "ln_f.weight",))]
    for i in range(cfg.n_layer):
        h, b = f"{p}h.{i}.", f"blocks.{i}."
        rules += [Rule(b + "ln_1.weight", (h + "ln_1.weight",)), Rule(b + "ln_2.weight", (h + "ln_2.weight",)),
                  Rule(b + "attn.qkv.weight", (h + "attn.c_attn.weight",)),
                  Rule(b + "attn.qkv.bias", (h + "attn.c_attn.bias",)),
                  Rule(b + "attn.proj.weight", (h + "attn.c_proj.weight",)),
                  # Qwen v1: c_proj(w1(x) * silu(w2(x))): w2 is the gated branch
                  Rule(b + "mlp.gate_up.weight", (h + "mlp.w2.weight", h + "mlp.w1.weight"), (inter, inter)),
                  Rule(b + "mlp.down.weight", (h + "mlp.c_proj.weight",))]
    return rules + _lm_head(cfg)


def _lm_head(cfg: Config) -> list[Rule]:
    return [] if cfg.tie_embeddings else [Rule("lm_head.weight", ("lm_head.weight",))]


def _swiglu_rules(ours: str, theirs: str, width: int) -> list[Rule]:
    return [Rule(ours + "gate_up.weight", (theirs + "gate_proj.weight", theirs + "up_proj.weight"), (width, width)),
            Rule(ours + "down.weight", (theirs + "down_proj.weight",))]


def _expert_rules(cfg: Config, b: str, h: str, fused: bool) -> list[Rule]:
    if fused:  # transformers >= 5 in-memory layout, also found in some checkpoint files
        return [Rule(b + "w_gate_up", (h + "experts.gate_up_proj",)), Rule(b + "w_down", (h + "experts.down_proj",))]
    I, E = cfg.moe_intermediate_size, range(cfg.n_experts)
    gate_up = tuple(f"{h}experts.{e}.{w}_proj.weight" for e in E for w in ("gate", "up"))
    down = tuple(f"{h}experts.{e}.down_proj.weight" for e in E)
    return [Rule(b + "w_gate_up", gate_up, (I, I), stacked=True), Rule(b + "w_down", down, (cfg.n_embd,), stacked=True)]


def _qwen2_rules(cfg: Config, fused_experts: bool = False) -> list[Rule]:
    p = "model."
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    rules = [Rule("wte.weight", (p + "embed_tokens.weight",)), Rule("ln_f.weight", (p + "norm.weight",))]
    for i in range(cfg.n_layer):
        h, b = f"{p}layers.{i}.", f"blocks.{i}."
        a = h + "self_attn."
        rules += [Rule(b + "ln_1.weight", (h + "input_layernorm.weight",)),
                  Rule(b + "ln_2.weight", (h + "post_attention_layernorm.weight",)),
                  Rule(b + "attn.qkv.weight", (a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"), (q, kv, kv)),
                  Rule(b + "attn.proj.weight", (a + "o_proj.weight",))]
        if cfg.qkv_bias:
            rules.append(Rule(b + "attn.qkv.bias", (a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"), (q, kv, kv)))
        if cfg.qk_norm:
            rules += [Rule(b + "attn.q_norm.weight", (a + "q_norm.weight",)), Rule(b + "attn.k_norm.weight", (a + "k_norm.weight",))]
        m = h + "mlp."
        if not cfg.is_moe_layer(i):
            rules += _swiglu_rules(b + "mlp.", m, cfg.intermediate_size)
            continue
        rules += [Rule(b + "mlp.router.weight", (m + "gate.weight",))] + _expert_rules(cfg, b + "mlp.", m, fused_experts)
        if cfg.shared_expert_intermediate_size:
            rules += _swiglu_rules(b + "mlp.shared.", m + "shared_expert.", cfg.shared_expert_intermediate_size)
            rules.append(Rule(b + "mlp.shared_gate.weight", (m + "shared_expert_gate.weight",)))
    return rules + _lm_head(cfg)


def weight_rules(cfg: Config, fused_experts: bool = False) -> list[Rule]:
    """The name map for `cfg.hf_model_type` (one Rule per parameter of our model)."""
    if cfg.hf_model_type in ("openai-gpt", "gpt2"):
        return _gpt_rules(cfg)
    if cfg.hf_model_type == "qwen":
        return _qwen1_rules(cfg)
    return _qwen2_rules(cfg, fused_experts)


def _their_shapes(rule: Rule, ours: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Expected HF shapes for a parameter of shape `ours` under `rule`."""
    inner = ours[1:] if rule.stacked else ours
    if rule.transpose:
        inner = inner[::-1]
    if rule.sizes and (len(rule.theirs) > 1 or rule.stacked):
        parts = [(s, *inner[1:]) for s in rule.sizes]
    else:
        parts = [tuple(inner)]
    return parts * (ours[0] if rule.stacked else 1)


def _assemble(rule: Rule, tensors: list[torch.Tensor]) -> torch.Tensor:
    if rule.transpose:
        tensors = [t.t() for t in tensors]
    if not rule.stacked:
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
    k = max(len(rule.sizes), 1)
    return torch.stack([torch.cat(tensors[i:i + k]) for i in range(0, len(tensors), k)])


def _disassemble(rule: Rule, t: torch.Tensor) -> list[torch.Tensor]:
    groups = list(t.unbind(0)) if rule.stacked else [t]
    parts = [p for g in groups for p in (g.split(list(rule.sizes)) if len(rule.sizes) > 1 else [g])]
    return [(p.t() if rule.transpose else p).contiguous() for p in parts]


# ---- reading ------------------------------------------------------------------------------------
class _Checkpoint:
    """Lazy access to the tensors of all safetensors files in a directory (sharded or not)."""

    def __init__(self, path: Path) -> None:
        # Like transformers: the index names the shards; else model.safetensors; other *.safetensors files
        # beside it (adapters, task heads) are not model weights.
        files = sorted(path.glob("*.safetensors"))
        if not files:
            extra = " (found *.bin: convert it to safetensors first)" if list(path.glob("*.bin")) else ""
            raise UserError(f"no *.safetensors weights in '{path}'{extra}; point at a checkpoint directory with weights")
        index = path / "model.safetensors.index.json"
        if index.exists():
            try:
                wanted = set(json.loads(index.read_text())["weight_map"].values())
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise UserError(f"'{index}' is not a valid safetensors index ({e}); restore the file") from None
            missing = sorted(w for w in wanted if not (path / w).exists())
            if missing:
                raise UserError(f"checkpoint '{path}' is missing shard files {missing}; download them again")
            files = sorted(path / w for w in wanted)
        elif (path / "model.safetensors").exists():
            files = [path / "model.safetensors"]
        self.where: dict[str, tuple[Any, str]] = {}  # our view of a key -> (file handle, key in the file)
        for f in files:
            try:
                h = safe_open(str(f), framework="pt")
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise UserError(f"cannot read '{f}': {e}; the file is corrupt or not safetensors") from e
            self.where.update((k, (h, k)) for k in h.keys())

    def alias(self, rules: list[Rule]) -> None:
        """Accept base-model files saved without the `transformer.`/`model.` prefix (e.g. the original gpt2)."""
        for key in (k for r in rules for k in r.theirs):
            short = key.split(".", 1)[1]
            if key not in self.where and short in self.where:
                self.where[key] = self.where.pop(short)

    def shape(self, key: str) -> tuple[int, ...]:
        h, k = self.where[key]
        return tuple(h.get_slice(k).get_shape())

    def get(self, key: str) -> torch.Tensor:
        h, k = self.where[key]
        return h.get_tensor(k)

    def float_dtype(self) -> torch.dtype:
        """The stored dtype of the first floating-point tensor (read from the header, no data)."""
        names = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
        for h, k in self.where.values():
            dtype = names.get(h.get_slice(k).get_dtype())
            if dtype is not None:
                return dtype
        return torch.float32


def _check_keys(rules: list[Rule], theirs: Mapping[str, tuple[int, ...]], ours: dict[str, tuple[int, ...]],
                cfg: Config, source: str) -> None:
    missing, wrong = [], []
    for r in rules:
        for key, want in zip(r.theirs, _their_shapes(r, ours[r.ours])):
            if key not in theirs:
                missing.append(key)
            elif tuple(theirs[key]) != want:
                wrong.append(f"{key} {list(theirs[key])} (expected {list(want)})")
    used = {k for r in rules for k in r.theirs}
    tied_head = {"lm_head.weight"} if cfg.tie_embeddings else set()
    unexpected = sorted(k for k in theirs if k not in used and k not in tied_head and not k.endswith(_IGNORED_SUFFIXES))
    problems = []
    for label, items in (("missing tensors", missing), ("unexpected tensors", unexpected), ("mis-shaped tensors", wrong)):
        if items:
            shown = ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise UserError(f"{source} ({cfg.hf_model_type}): " + "; ".join(problems)
                        + "; check that the weights and the model description belong together")


def fill_model(model: torch.nn.Module, shapes: Mapping[str, tuple[int, ...]], get_tensor: Callable[[str], torch.Tensor],
               dtype: torch.dtype = torch.float32, device: torch.device | None = None, rules: list[Rule] | None = None,
               source: str = "checkpoint does not match its config.json") -> torch.nn.Module:
    """Fill `model` (built on the meta device from its `.config`) with Hugging Face-named tensors; eval mode.

    `shapes` lists the available tensors (name -> shape); they are checked against the model before any memory
    is allocated (a UserError starting with `source` names missing, unexpected and mis-shaped ones). The model
    is materialised once in `dtype` on `device` and filled one parameter at a time with `get_tensor(name)`, so a
    lazy or consuming reader keeps peak memory low.
    """
    cfg: Config = model.config
    rules = weight_rules(cfg) if rules is None else rules
    _check_keys(rules, shapes, {k: tuple(p.shape) for k, p in model.named_parameters()}, cfg, source)
    model.to(dtype)  # free on the meta device, so real memory is allocated once, in the final dtype
    model.to_empty(device=device if device is not None else torch.device("cpu"))
    params = dict(model.named_parameters())  # to_empty may have replaced the objects
    with torch.no_grad():
        for r in rules:
            params[r.ours].copy_(_assemble(r, [get_tensor(k) for k in r.theirs]))
    if cfg.tie_embeddings:
        model.lm_head.weight = model.wte.weight
    return model.eval()


@dataclass
class HFCheckpoint:
    """What `read_checkpoint` finds in a checkpoint directory: the config, the lazy tensors and their name map."""

    config: Config
    shapes: dict[str, tuple[int, ...]]
    get_tensor: Callable[[str], torch.Tensor]
    stored_dtype: torch.dtype
    rules: list[Rule]


def read_checkpoint(path: Path) -> HFCheckpoint:
    """Read config.json and the safetensors headers of an HF checkpoint directory (no tensor data yet)."""
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise UserError(f"'{path}' has no config.json; pass a Hugging Face checkpoint directory")
    try:
        hf_cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{cfg_file}' is not valid JSON ({e}); restore the file") from None
    cfg = _dca_from_hf(config_from_hf(hf_cfg, name=_model_name(path)), hf_cfg.get("dual_chunk_attention_config"))
    ckpt = _Checkpoint(path)
    fused = any(k.endswith("experts.gate_up_proj") for k in ckpt.where)
    rules = weight_rules(cfg, fused_experts=fused)
    ckpt.alias(rules)
    shapes = {k: ckpt.shape(k) for k in ckpt.where}  # header reads only
    return HFCheckpoint(cfg, shapes, ckpt.get, ckpt.float_dtype(), rules)


def _model_name(path: Path) -> str:
    """The folder's name, or `Name` for a Hub cache snapshot (models--Org--Name/snapshots/<revision>)."""
    path = path.resolve()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.name


# ---- writing ------------------------------------------------------------------------------------
QWEN1_NOTE = ("This is a Qwen (v1) checkpoint (model_type 'qwen'). transformers has no built-in class for it (Qwen "
              "published it with remote code), so transformers' Auto* classes, and tools that read configs through "
              "them such as vLLM, cannot load this folder; gptqwen loads it (gptqwen generate --model <this folder>). "
              "Its tokenizer files, when written, are standard and load with transformers.AutoTokenizer.")


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> Path:
    """`tokenizer.save(directory)`, plus the chat template as Jinja in tokenizer_config.json when it is a
    native format (whose name stays there as `chat_template_name`, so gptqwen keeps rendering it natively)."""
    directory = Path(tokenizer.save(directory))
    jinja = chat_template_jinja(tokenizer.chat_template)
    if jinja is not None and jinja != tokenizer.chat_template:
        path = directory / "tokenizer_config.json"
        cfg = {**json.loads(path.read_text(encoding="utf-8")), "chat_template": jinja}
        with atomic_write(path, encoding="utf-8") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)
    return directory


def _generation_config(hf_cfg: dict, tokenizer) -> dict:
    """generation_config.json: the model's bos/eos ids, and with a tokenizer every id that ends a turn (e.g.
    <|im_end|> and <|endoftext|>) plus its pad id, so that transformers' and vLLM's generation stop where ours does."""
    gen = {k: hf_cfg[k] for k in ("bos_token_id", "eos_token_id") if hf_cfg.get(k) is not None}
    if tokenizer is not None and tokenizer.stop_ids:
        stops = sorted(tokenizer.stop_ids | ({gen["eos_token_id"]} if "eos_token_id" in gen else set()))
        gen["eos_token_id"] = stops[0] if len(stops) == 1 else stops
        if tokenizer.pad_id is not None:
            gen["pad_token_id"] = tokenizer.pad_id
    return gen


def _with_legacy_keys(hf_cfg: dict, dtype: torch.dtype) -> dict:
    """Add what readers older than transformers 5 look for: `rope_theta` / `rope_scaling` at the top level
    (5 keeps them in `rope_parameters`), `torch_dtype` (5 calls it `dtype`) and, where sliding windows are off,
    `sliding_window: null` (4.x warns that the window is unsupported when a size is left at its default).
    vLLM reads configs through transformers, so the same keys serve it."""
    out = {**hf_cfg, "dtype": str(dtype).removeprefix("torch."), "torch_dtype": str(dtype).removeprefix("torch.")}
    if hf_cfg.get("use_sliding_window") is False:
        out["sliding_window"] = None
    rope = hf_cfg.get("rope_parameters")
    if rope:
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        out["rope_theta"] = rope["rope_theta"]
        out["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    return out

def _dca_from_hf(cfg: Config, dca: dict | None) -> Config:
    """Qwen2.5-1M's `dual_chunk_attention_config` (also vLLM's): its `chunk_size` is the whole window c = s + w
    (chunks of chunk_size - local_size tokens), our `dca.chunk_size` is s."""
    if not dca:
        return cfg
    try:
        c, w = int(dca["chunk_size"]), int(dca["local_size"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"config.json's dual_chunk_attention_config {dca!r} needs integer chunk_size and "
                        "local_size; fix or remove it") from None
    return cfg.replace(dca={"chunk_size": c - w, "local_size": w})


def _dca_to_hf(cfg: Config) -> dict:
    """The `dual_chunk_attention_config` key for a model with DCA switched on (`_dca_from_hf` reversed)."""
    if not cfg.dca:
        return {}
    s, w = cfg.dca["chunk_size"], cfg.dca["local_size"]
    return {"dual_chunk_attention_config": {"chunk_size": s + w, "local_size": w,
                                            "original_max_position_embeddings": cfg.trained_len()}}


def _parse_size(s: str | int) -> int:
    if isinstance(s, int):
        return s
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
    for u, m in units.items():
        if s.upper().endswith(u):
            return int(float(s[:-2]) * m)
    return int(s)


def save_pretrained(model, path: str | os.PathLike, max_shard_size: str | int = "5GB", tokenizer=None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write `model` (any module with `.config` and `.state_dict()`) as an HF checkpoint directory, atomically;
    shards with an index above `max_shard_size`; with `tokenizer`, its files too (`save_tokenizer`)."""
    cfg: Config = model.config
    hf_cfg = {**config_to_hf(cfg), **_dca_to_hf(cfg)}  # raises for architectures transformers cannot represent
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for r in weight_rules(cfg):
        t = state[r.ours].detach().to("cpu", dtype or state[r.ours].dtype)
        tensors.update(zip(r.theirs, _disassemble(r, t)))
    hf_cfg = _with_legacy_keys(hf_cfg, next(iter(tensors.values())).dtype)
    limit = _parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > limit:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += n
    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        gen = _generation_config(hf_cfg, tokenizer)
        if gen:
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        if cfg.hf_model_type == "qwen":
            (tmp / "README.md").write_text(f"# {cfg.name}\n\n{QWEN1_NOTE}\n")
    if cfg.hf_model_type == "qwen":
        warnings.warn(f"{path}: {QWEN1_NOTE}", stacklevel=2)
    return path


__all__ = ["HFCheckpoint", "QWEN1_NOTE", "Rule", "SUPPORTED_MODEL_TYPES", "chat_template_jinja", "fill_model",
           "read_checkpoint", "save_pretrained", "save_tokenizer", "weight_rules"]
