"""Run configuration: recipes (YAML), their sections, `key=value` overrides and range checks.

A recipe has three sections and optional stages:

    name: qwen3-shakespeare
    model: {preset: qwen3-tiny, n_layer: 4, n_embd: 192}   # a Config preset plus field overrides
    data:  {sources: [shakespeare], dir: data/shakespeare-bpe4096, train_vocab: 4096}
    train: {seq_len: 256, batch_size: 16, max_steps: 600, lr: 3.0e-3}
    stages:                                               # optional: run one after another,
      - {name: general}                                   # each starting from the previous weights
      - {name: long, train: {seq_len: 1024}, model: {rope_theta: 1.0e6}}

Built-in recipes live in `gptqwen/recipes/*.yaml` and are found by name (`gptqwen pretrain --config
qwen3-moe-shakespeare`). Overrides are `section.key=value` (or a bare `key=value` when the key is unique).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gptqwen.errors import UserError, closest

DEFAULT_RECIPE = "qwen3-shakespeare"


@dataclass
class DataConfig:
    sources: list = field(default_factory=lambda: ["shakespeare"])
    dir: str = "data/shakespeare-bpe4096"  # token dataset; built on first use when missing
    tokenizer: str | None = None  # preset name or tokenizer file; None -> train a BPE of train_vocab
    train_vocab: int | None = 4096
    style: str = "qwen"
    val_fraction: float = 0.05
    on_error: str = "fail"
    text_key: str = "text"


@dataclass
class TrainConfig:
    seq_len: int = 256
    batch_size: int = 8  # global sequences per optimizer step
    micro_batch: int | None = None  # sequences per forward per process; None -> all of this process's share
    max_steps: int = 700
    lr: float = 2.5e-3
    min_lr: float = 2.5e-4
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | wsd | constant
    decay_fraction: float = 0.2  # wsd only
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    seed: int = 1337
    dtype: str = "auto"  # auto (bf16 autocast on bf16-capable GPUs, else fp32) | bf16 | fp32
    compile: bool = False
    device: str = "auto"
    dist: str = "ddp"  # under torchrun: ddp | fsdp
    threads: int = 0  # CPU threads per process; 0 = torch's default
    log_interval: int = 10
    eval_interval: int = 100
    eval_tokens: int = 16384
    sample_interval: int = 175
    sample_tokens: int = 160
    sample_prompt: str = "\n"
    temperature: float = 0.8
    top_k: int = 40
    ckpt_interval: int = 350
    keep_last: int = 2
    ckpt_format: str = "gathered"  # gathered (one full state, rank 0 writes) | sharded (torch.distributed.checkpoint)
    peak_flops: float | None = None  # per device, for MFU; None -> measured matmul peak
    tensorboard: bool = True


# (check, message) per field: the message is shown for out-of-range values
_RANGES: dict[str, tuple[Any, str]] = {
    "seq_len": (lambda v: v >= 2, ">= 2"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "micro_batch": (lambda v: v is None or v >= 1, ">= 1"),
    "max_steps": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: 0 < v < 10, "in (0, 10)"),
    "min_lr": (lambda v: v >= 0, ">= 0"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "schedule": (lambda v: v in ("cosine", "wsd", "constant"), "one of cosine, wsd, constant"),
    "decay_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "weight_decay": (lambda v: 0 <= v < 10, "in [0, 10)"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "grad_clip": (lambda v: v >= 0, ">= 0"),
    "dtype": (lambda v: v in ("auto", "bf16", "fp32"), "one of auto, bf16, fp32"),
    "dist": (lambda v: v in ("ddp", "fsdp"), "ddp or fsdp"),
    "threads": (lambda v: v >= 0, ">= 0"),
    "log_interval": (lambda v: v >= 1, ">= 1"),
    "eval_interval": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "eval_tokens": (lambda v: v >= 1, ">= 1"),
    "sample_interval": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "sample_tokens": (lambda v: v >= 0, ">= 0"),
    "temperature": (lambda v: v >= 0, ">= 0"),
    "top_k": (lambda v: v >= 0, ">= 0"),
    "ckpt_interval": (lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    "keep_last": (lambda v: v >= 1, ">= 1"),
    "ckpt_format": (lambda v: v in ("gathered", "sharded"), "gathered or sharded"),
    "peak_flops": (lambda v: v is None or v > 0, "> 0"),
    "val_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train_vocab": (lambda v: v is None or 256 < v <= 1_000_000, "in 257..1000000"),
    "on_error": (lambda v: v in ("fail", "skip"), "fail or skip"),
}


def _scalar(text: str) -> Any:
    """Parse an override value: numbers (also `3e-4`, which YAML 1.1 reads as a string), then YAML."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, like: Any, key: str) -> Any:
    """Turn an override string into the type of the field's default."""
    if not isinstance(value, str) or isinstance(like, str):
        return value
    parsed = _scalar(value)
    if isinstance(like, bool) and not isinstance(parsed, bool):
        raise UserError(f"{key} must be true or false, not '{value}'")
    if isinstance(like, (int, float)) and not isinstance(like, bool) and not isinstance(parsed, (int, float)):
        raise UserError(f"{key} must be a number, not '{value}'")
    return float(parsed) if isinstance(like, float) else parsed


def _build(cls, values: dict[str, Any], section: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    kwargs = {}
    for k, v in (values or {}).items():
        if k not in names:
            raise UserError(f"unknown {section} setting '{k}'.{closest(k, names)}")
        v = _coerce(v, getattr(defaults, k), f"{section}.{k}")
        if k in _RANGES and not _RANGES[k][0](v):
            raise UserError(f"{section}.{k} = {v!r} is out of range; it must be {_RANGES[k][1]}")
        kwargs[k] = v
    return cls(**kwargs)


@dataclass
class Recipe:
    """A resolved run: model preset + overrides, data and training settings, optional stages."""

    name: str
    model: dict[str, Any]
    data: DataConfig
    train: TrainConfig
    stages: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def stage(self, index: int) -> "Recipe":
        """The recipe of stage `index`: this recipe with the stage's sections merged over it."""
        spec = self.stages[index]
        raw = copy.deepcopy(self.raw)
        raw.pop("stages", None)
        for section in ("model", "data", "train"):
            raw[section] = {**raw.get(section, {}), **(spec.get(section) or {})}
        raw["name"] = f"{self.name}/{spec['name']}"
        return Recipe.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "model": dict(self.model), "data": dataclasses.asdict(self.data), "train": dataclasses.asdict(self.train)}
        if self.stages:
            out["stages"] = self.stages
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Recipe":
        if not isinstance(raw, dict):
            raise UserError("a recipe must be a YAML mapping with model, data and train sections")
        unknown = set(raw) - {"name", "description", "model", "data", "train", "stages"}
        if unknown:
            raise UserError(f"unknown recipe section(s) {sorted(unknown)}; allowed: name, description, model, data, train, stages")
        model = dict(raw.get("model") or {})
        model.setdefault("preset", "qwen3-tiny")
        stages = list(raw.get("stages") or [])
        for i, s in enumerate(stages):
            if not isinstance(s, dict) or not s.get("name") or set(s) - {"name", "model", "data", "train"}:
                raise UserError(f"stage {i} must be a mapping with a name and optional model, data and train sections")
        return cls(
            name=str(raw.get("name", "run")),
            model=model,
            data=_build(DataConfig, raw.get("data"), "data"),
            train=_build(TrainConfig, raw.get("train"), "train"),
            stages=stages,
            raw=copy.deepcopy(raw),
        )


def recipe_names() -> list[str]:
    root = importlib.resources.files("gptqwen") / "recipes"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | None = None, overrides: list[str] | None = None, preset: str | None = None) -> Recipe:
    """A built-in recipe by name or a YAML file, with `--preset` and `key=value` overrides applied."""
    spec = name_or_path or DEFAULT_RECIPE
    path = Path(spec).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise UserError(f"recipe file '{spec}' does not exist")
        text = path.read_text(encoding="utf-8")
    else:
        if spec not in recipe_names():
            raise UserError(f"unknown recipe '{spec}'.{closest(spec, recipe_names())} Built-in recipes: {', '.join(recipe_names())}")
        text = (importlib.resources.files("gptqwen") / "recipes" / f"{spec}.yaml").read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"recipe '{spec}' is not valid YAML: {str(e).splitlines()[0]}") from None
    raw = copy.deepcopy(raw)
    if preset:
        raw.setdefault("model", {})
        raw["model"] = {"preset": preset}  # a new preset replaces the recipe's model overrides
    for item in overrides or []:
        _apply_override(raw, item)
    return Recipe.from_dict(raw)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"override '{item}' must look like key=value, e.g. train.lr=1e-3 or model.n_layer=6")
    if "." in key:
        section, name = key.split(".", 1)
        if section not in ("model", "data", "train"):
            raise UserError(f"override '{item}': section must be model, data or train.{closest(section, ['model', 'data', 'train'])}")
    else:
        owners = [s for s, cls in (("data", DataConfig), ("train", TrainConfig)) if key in {f.name for f in dataclasses.fields(cls)}]
        if len(owners) != 1:
            raise UserError(f"override '{item}': unknown key; write section.key (model.*, data.*, train.*)."
                            f"{closest(key, [f.name for f in dataclasses.fields(TrainConfig)])}")
        section, name = owners[0], key
    target = raw.setdefault(section, {}) or {}
    raw[section] = target
    target[name] = _scalar(value) if section == "model" else value
    for stage in raw.get("stages") or []:  # a command-line override wins over every stage's setting too
        if name in (stage.get(section) or {}):
            stage[section][name] = target[name]
