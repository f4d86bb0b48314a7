"""LoRA adapters in Hugging Face PEFT's format, both ways, without `peft` installed.

An adapter folder holds `adapter_config.json` (r, lora_alpha, target_modules, base_model_name_or_path, ...)
and `adapter_model.safetensors`, whose tensors are named after the transformers layout that `save_pretrained`
writes: `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` [r, in] and `...lora_B.weight` [out, r].
gptqwen fuses q|k|v and gate|up into one matrix each; `hf.weight_rules` says which rows of a fused matrix each
HF module holds, and that is all the translation needs:
  * writing, a slice adapter on exactly one HF module's rows is that module's adapter as it is; an adapter on the
    whole fused matrix (target `qkv`) becomes one adapter per module with A repeated and B cut into row blocks; and
    several slices inside one HF module (GPT-2's fused `c_attn`) become one adapter of the summed rank with a
    block-diagonal B (its rank and alpha in `rank_pattern`/`alpha_pattern`). Every case computes the same function.
  * reading, each HF module's adapter becomes the slice of our fused layer that holds its rows.

    from gptqwen.peft_format import adapter_state, write_adapter, load_adapter
    write_adapter("run/adapter", *adapter_state(model, base="Qwen/Qwen3-0.6B"))  # a model with LoRALinear layers
    load_adapter(model, "some/peft_adapter")                                  # wraps the model's layers in place
    # in peft: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(exported_dir), "run/adapter")

Users reach it through `gptqwen generate|chat|eval|serve --adapter DIR`, `gptqwen adapter merge` and the
`adapter/` folder that LoRA runs (`gptqwen sft|dpo|grpo --lora-r`) write beside the merged model.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gptqwen import hf
from gptqwen.config import config_from_hf
from gptqwen.errors import UserError
from gptqwen.model.lora import LoRALinear, Slice, lora_layers, merge_lora
from gptqwen.utils import atomic_dir

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel wraps the transformers model: base_model (LoraModel) -> model
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")
# PEFT features that change what the adapter computes beyond `scale * B @ A @ x` on linear layers
_UNSUPPORTED = {"use_dora": "DoRA", "use_qalora": "QA-LoRA", "use_bdlora": "block-diagonal LoRA",
                "lora_bias": "LoRA bias terms", "bias": "trained biases", "modules_to_save": "modules_to_save",
                "trainable_token_indices": "trainable tokens", "target_parameters": "LoRA on parameters",
                "layer_replication": "layer replication", "alora_invocation_tokens": "activated LoRA",
                "arrow_config": "Arrow routing", "kasa_config": "KaSA", "monteclora_config": "MonteCLoRA"}
_PLAIN_INITS = (True, False, "gaussian", "eva")  # others (pissa, olora, loftq, corda) also rewrite the base weights
_ARCH_FIELDS = ("hf_model_type", "vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "head_dim",
                "intermediate_size")


@dataclass(frozen=True)
class Part:
    """One HF linear module and the output rows of our (possibly fused) layer that it holds."""

    hf: str
    rows: Slice
    conv1d: bool  # GPT's Conv1D layout: PEFT needs fan_in_fan_out


def module_map(model: nn.Module) -> dict[str, list[Part]]:
    """Our linear layer path (`blocks.0.attn.qkv`) -> the HF modules holding its rows (q_proj, k_proj, v_proj)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | LoRALinear)}
    out: dict[str, list[Part]] = {}
    for rule in hf.weight_rules(model.config):
        path = rule.ours.removesuffix(".weight")
        if rule.stacked or path not in layers:
            continue
        out_features = layers[path].weight.shape[0]
        sizes = rule.sizes if len(rule.theirs) > 1 else (out_features,)
        at, parts = 0, []
        for key, size in zip(rule.theirs, sizes):
            parts.append(Part(key.removesuffix(".weight"), (at, at + size), rule.transpose))
            at += size
        out[path] = parts
    return out


def _hf_linear_names(model: nn.Module, parts: dict[str, list[Part]]) -> set[str]:
    """Every HF linear module name of this architecture (routed experts included), for target_modules."""
    experts = {k.removesuffix(".weight") for r in hf.weight_rules(model.config) if r.stacked for k in r.theirs}
    return {p.hf for ps in parts.values() for p in ps} | experts


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def adapter_state(model: nn.Module, base: str | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """`(adapter_config, tensors)` in PEFT's format for the LoRALinear layers of `model` (see the module docstring)."""
    layers = lora_layers(model)
    if not layers:
        raise UserError("the model has no LoRA layers to save as an adapter")
    parts_of = module_map(model)
    tensors: dict[str, torch.Tensor] = {}
    rank: dict[str, int] = {}
    alpha: dict[str, int | float] = {}
    conv1d, dropout = False, 0.0
    for path, layer in layers.items():
        if path not in parts_of:
            raise UserError(f"LoRA layer '{path}' has no counterpart in the Hugging Face layout of "
                            f"{model.config.hf_model_type}; adapt q, k, v, o, gate, up or down instead")
        dropout = max(dropout, getattr(layer.dropout, "p", 0.0))
        for part in parts_of[path]:
            p0, p1 = part.rows
            hits = [i for i, (s0, s1) in enumerate(layer.slices) if s0 < p1 and s1 > p0]
            if not hits:
                continue
            a = torch.cat([layer.lora_A[i].detach() for i in hits])
            b = torch.zeros(p1 - p0, a.shape[0], dtype=a.dtype)
            col = 0
            for i in hits:  # B of slice i on the rows the slice shares with this module, in its own rank columns
                (s0, s1), r_i = layer.slices[i], layer.lora_A[i].shape[0]
                lo, hi = max(s0, p0), min(s1, p1)
                b[lo - p0:hi - p0, col:col + r_i] = layer.lora_B[i].detach()[lo - s0:hi - s0].cpu()
                col += r_i
            tensors[f"{PREFIX}{part.hf}.lora_A.weight"] = a.cpu().contiguous()
            tensors[f"{PREFIX}{part.hf}.lora_B.weight"] = b.contiguous()
            rank[part.hf], alpha[part.hf] = a.shape[0], _number(layer.scale * a.shape[0])
            conv1d |= part.conv1d
    r, lora_alpha = Counter(zip(rank.values(), alpha.values())).most_common(1)[0][0]
    adapted = set(rank)
    leaves = {n.rsplit(".", 1)[-1] for n in adapted}
    # leaf names (q_proj, ...) when they pick exactly the adapted modules; full module names otherwise
    every = _hf_linear_names(model, parts_of)
    by_leaf = {n for n in every if n.rsplit(".", 1)[-1] in leaves}
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "revision": None,
        "r": r, "lora_alpha": lora_alpha, "lora_dropout": dropout,
        "target_modules": sorted(leaves if by_leaf == adapted else adapted),
        # PEFT matches these keys as regular expressions against module names: escaped, they match exactly
        "rank_pattern": {re.escape(n): k for n, k in sorted(rank.items()) if k != r},
        "alpha_pattern": {re.escape(n): a for n, a in sorted(alpha.items()) if a != lora_alpha},
        "fan_in_fan_out": conv1d, "bias": "none", "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True,
    }
    return config, tensors


def write_adapter(path: str | os.PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write an adapter folder (atomically: a crash leaves the old folder or none)."""
    with atomic_dir(path) as tmp:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return Path(path)


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """`(adapter_config, tensors)` of a PEFT LoRA adapter folder; a UserError for what gptqwen cannot apply."""
    path = Path(path).expanduser()
    if not (path / ADAPTER_CONFIG).is_file():
        raise UserError(f"'{path}' is not a PEFT adapter folder (no {ADAPTER_CONFIG}); pass the folder that "
                        "PeftModel.save_pretrained or a gptqwen LoRA run (its adapter/ folder) wrote")
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path / ADAPTER_CONFIG}' is not valid JSON ({e}); restore the file") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise UserError(f"'{path}' is a {kind or 'non-PEFT'} adapter; only LoRA adapters (peft_type LORA) are supported")
    _check_supported(config, path)
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        extra = " (adapter_model.bin is pickle, which is not loaded: save it again with safetensors)" \
            if (path / "adapter_model.bin").exists() else ""
        raise UserError(f"'{path}' has no {ADAPTER_WEIGHTS}{extra}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read '{weights}': {e}; the file is corrupt or not safetensors") from None
    return config, tensors


def _check_supported(config: dict[str, Any], path: Path) -> None:
    used = [label for key, label in _UNSUPPORTED.items() if config.get(key) not in (None, False, [], {}, "none", "")]
    used += [k for k, v in config.items() if k.startswith("use_") and k not in _UNSUPPORTED and k != "use_rslora" and v]
    if config.get("init_lora_weights", True) not in _PLAIN_INITS:
        used.append(f"init_lora_weights={config['init_lora_weights']} (it changes the base weights too)")
    if used:
        raise UserError(f"adapter '{path}' uses {', '.join(used)}, which gptqwen does not apply; merge it with peft "
                        "(merge_and_unload, then save_pretrained) and load the merged model instead")


def _pattern(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _check_base(model: nn.Module, config: dict[str, Any], path: Path) -> None:
    """Refuse an adapter whose recorded base is, where we can tell, another architecture than `model`."""
    cfg = model.config
    base = config.get("base_model_name_or_path") or ""
    cls = (config.get("auto_mapping") or {}).get("base_model_class")
    family = {"openai-gpt": "OpenAIGPT", "gpt2": "GPT2", "qwen": "QWen", "qwen2": "Qwen2", "qwen2_moe": "Qwen2Moe",
              "qwen3": "Qwen3", "qwen3_moe": "Qwen3Moe", "llama": "Llama"}.get(cfg.hf_model_type)
    if cls and family and re.sub(r"(ForCausalLM|LMHeadModel|Model)$", "", cls) != family:
        raise UserError(f"adapter '{path}' was made for a {cls} ('{base}'), not for this {cfg.hf_model_type} model; "
                        "use an adapter trained on this base model")
    their_file = Path(base).expanduser() / "config.json" if base else None
    if their_file is None or not their_file.is_file():
        return  # a Hub id or a folder that is not here: the tensor shapes are checked instead
    try:
        theirs = config_from_hf(json.loads(their_file.read_text()), name=base)
    except (UserError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return
    diff = [f"{f} {getattr(theirs, f)} vs {getattr(cfg, f)}" for f in _ARCH_FIELDS if getattr(theirs, f) != getattr(cfg, f)]
    if diff:
        raise UserError(f"adapter '{path}' was made for '{base}', whose architecture differs from this model's "
                        f"({'; '.join(diff)}); use an adapter trained on this base model")


def load_adapter(model: nn.Module, path: str | os.PathLike, merge: bool = False) -> list[str]:
    """Wrap the layers of `model` named by the PEFT adapter at `path` in LoRALinear (in place; with `merge`, fold
    the updates into the weights at once); returns the HF module names adapted."""
    path = Path(path).expanduser()
    config, tensors = read_adapter(path)
    _check_base(model, config, path)
    if lora_layers(model):
        raise UserError("the model already has LoRA layers; merge them before applying another adapter")
    where: dict[str, tuple[str, Part]] = {p.hf: (ours, p) for ours, parts in module_map(model).items() for p in parts}
    for name in list(where):  # adapters saved from a bare transformers base model lack the `model.` prefix
        where.setdefault(name.split(".", 1)[-1], where[name])
    factors: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, t in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise UserError(f"adapter '{path}' holds tensor '{key}', which is not a LoRA A/B matrix of a linear "
                            "layer (embedding adapters, DoRA magnitudes and biases are not supported)")
        factors[m["module"]][m["ab"]] = t
    unknown = sorted(n for n in factors if n not in where)
    if unknown:
        raise UserError(f"adapter '{path}' names modules this {model.config.hf_model_type} model does not have "
                        f"({', '.join(unknown[:4])}{' ...' if len(unknown) > 4 else ''}); it was made for another base "
                        f"model ('{config.get('base_model_name_or_path')}')")
    pieces: dict[str, list] = defaultdict(list)
    modules = dict(model.named_modules())
    for name, ab in sorted(factors.items()):
        ours, part = where[name]
        pieces[ours].append((part.rows, *_checked(name, ab, config, modules[ours], part, path)))
    for ours, items in pieces.items():
        parent, _, attr = ours.rpartition(".")
        owner = modules[parent] if parent else model
        setattr(owner, attr, LoRALinear.from_factors(getattr(owner, attr), items))
    if merge:
        merge_lora(model)
    return sorted(factors)


def _checked(name: str, ab: dict[str, torch.Tensor], config: dict[str, Any], layer: nn.Linear, part: Part,
             path: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`(A, B, scale)` of one HF module's adapter, after checking the shapes against our layer."""
    missing = sorted({"A", "B"} - set(ab))
    if missing:
        raise UserError(f"adapter '{path}' has no lora_{missing[0]} for '{name}'; the file is incomplete")
    a, b = ab["A"], ab["B"]
    r = a.shape[0]
    want_a, want_b = (r, layer.in_features), (part.rows[1] - part.rows[0], r)
    if a.dim() != 2 or b.dim() != 2 or tuple(a.shape) != want_a or tuple(b.shape) != want_b:
        raise UserError(f"adapter '{path}' does not fit this model: '{name}' has lora_A {list(a.shape)} and lora_B "
                        f"{list(b.shape)}, the model needs {list(want_a)} and {list(want_b)}; it was made for another "
                        f"base model ('{config.get('base_model_name_or_path')}')")
    rank = _pattern(config.get("rank_pattern") or {}, name, config.get("r", r))
    if rank != r:
        raise UserError(f"adapter '{path}': '{name}' has rank {r} but adapter_config.json says {rank}; "
                        "the config and the weights do not belong together")
    alpha = _pattern(config.get("alpha_pattern") or {}, name, config.get("lora_alpha", r))
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return a, b, scale
