"""Recipes: one configuration system for every trainer (YAML + `section.key=value` overrides).

A recipe names its trainer and holds that trainer's sections; each section is a dataclass below, so a
recipe is checked — unknown keys (with the closest names), types, ranges — before any data or model work:

    name: qwen3-shakespeare
    trainer: pretrain                                     # pretrain (default) | sft | finetune | reward | dpo | grpo
    model: {preset: qwen3-tiny, n_layer: 4, n_embd: 192}  # pretrain: a Config preset plus field overrides
    data:  {sources: [shakespeare], dir: data/shakespeare-bpe4096, train_vocab: 4096}
    train: {seq_len: 256, batch_size: 16, max_steps: 600, lr: 3.0e-3}
    stages:                                               # optional: run one after another,
      - {name: general}                                   # each starting from the previous weights
      - {name: long, train: {seq_len: 1024}, model: {rope_theta: 1.0e6}}

Sections per trainer (`TRAINERS`): pretrain — model (preset), data, train; sft — model (base), sft, lora,
train; finetune — model (base), task, train; reward — model, pref, reward, train; dpo — model, pref, dpo,
lora, train; grpo — model, grpo, lora, train; vl — vl, train; distill; post. Built-in recipes live in `gptqwen/recipes/*.yaml` and are
found by name (`gptqwen sft -c sft-qwen3`); each trainer has a default one (`DEFAULT_RECIPES`), which is
where its default hyperparameters live. Overrides are `section.key=value`, or a bare `key=value` when
the key belongs to one section only.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gptqwen.config import Config
from gptqwen.errors import UserError, closest
from gptqwen.infer.sampling import DEFAULT_TEMPERATURE
from gptqwen.train.recipe_reasoning import DistillConfig, PostConfig
from gptqwen.train.recipe_vision import VLConfig


@dataclass
class DataConfig:
    """pretrain: the token dataset, built from `sources` on first use."""

    sources: list = field(default_factory=lambda: ["shakespeare"])
    dir: str = "data/shakespeare-bpe4096"
    tokenizer: str | None = None  # preset name or tokenizer file; None -> train a BPE of train_vocab
    train_vocab: int | None = 4096
    style: str = "qwen"
    val_fraction: float = 0.05
    on_error: str = "fail"
    text_key: str = "text"


@dataclass
class BaseModelConfig:
    """sft / finetune: the model to start from."""

    base: str | None = None  # run dir, HF dir, .gguf or preset (`--from`)
    tokenizer: str | None = None  # tokenizer.json or preset, when `base` has none
    from_scratch: bool = False  # same architecture and tokenizer, fresh weights (the baseline transfer is measured against)


@dataclass
class TrainConfig:
    """The optimisation loop every trainer shares (the training core in train/loop.py)."""

    seq_len: int = 256  # pretrain: tokens per sequence
    doc_windows: bool = False  # pretrain: sequences start at document starts, not at fixed offsets (train/loader.py)
    batch_size: int = 8  # global sequences (sft: packed rows, finetune: examples) per optimizer step
    micro_batch: int | None = None  # pretrain: sequences per forward per process; None -> all of its share
    max_steps: int | None = 700  # optimizer steps; None -> from `epochs`
    epochs: float | None = None  # passes over the training data, used when max_steps is null
    lr: float = 2.5e-3
    min_lr: float = 2.5e-4
    warmup_steps: int = 50
    warmup_ratio: float = 0.0  # warmup as a fraction of the steps, used when warmup_steps is 0
    schedule: str = "cosine"  # cosine | wsd | linear | constant
    decay_fraction: float = 0.2  # wsd only
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    seed: int = 1337
    dtype: str = "auto"  # auto (bf16 autocast on bf16-capable GPUs, else fp32) | bf16 | fp32
    compile: bool = False
    activation_checkpointing: bool = False  # recompute each decoder block in the backward pass (less memory)
    device: str = "auto"
    dist: str = "ddp"  # under torchrun: ddp | fsdp
    moe_balance: str = "micro"  # MoE load balancing over: micro (each micro-batch, transformers) | global (Qwen3: the global batch)
    threads: int = 0  # CPU threads per process; 0 = torch's default
    log_interval: int = 10
    eval_interval: int = 100  # pretrain: validation loss every N steps (0 = only at the end)
    eval_tokens: int = 16384
    sample_interval: int = 175  # pretrain: a sample every N steps (0 = only at the end)
    sample_tokens: int = 160  # 0 = no samples
    sample_prompt: str = "\n"
    temperature: float = DEFAULT_TEMPERATURE  # the samples' (one default with generate, chat and SamplingParams)
    top_k: int = 40
    ckpt_interval: int = 350  # 0 = only at the end
    keep_last: int = 2
    ckpt_format: str = "gathered"  # gathered (one full state, rank 0 writes) | sharded (torch.distributed.checkpoint)
    peak_flops: float | None = None  # per device, for MFU; None -> a GPU's datasheet peak, else the best measured matmul rate
    tensorboard: bool = True


@dataclass
class SFTConfig:
    """sft: the conversations and how they become rows."""

    data: str | None = None  # conversations JSONL (OpenAI/ChatML messages)
    synthetic: int | None = None  # instead of data: this many built-in reasoning conversations
    think_ratio: float = 0.5  # synthetic: share of thinking examples
    synthetic_kinds: list = field(default_factory=lambda: ["arithmetic", "logic"])
    flag_prob: float = 0.5  # chance of appending /think or /no_think to a row without a switch
    max_len: int | None = None  # tokens per packed row; None -> the model's context
    too_long: str = "drop"  # drop | truncate | error
    packing: bool = True
    eval_reasoning: int | None = None  # after training: grade N held-out synthetic problems, thinking on and off
    eval_seed: int = 1234
    eval_max_new_tokens: int = 128


@dataclass
class LoraConfig:
    """sft: LoRA adapters (off while r is null), merged into the exported weights."""

    r: int | None = None
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list = field(default_factory=lambda: ["q", "k", "v", "o"])


@dataclass
class TaskConfig:
    """finetune: the GPT-1 task and its data."""

    task: str | None = None  # classification | entailment | similarity | multiple-choice
    data: str | None = None  # training JSONL
    eval: str | None = None  # dev JSONL, scored after training
    labels: list | None = None  # the label set; None -> the labels of `data`, sorted
    lm_coef: float = 0.5  # λ in L = L_task + λ·L_LM
    dropout: float = 0.1  # before the head
    max_len: int | None = None  # context for one sequence; None -> the model's
    too_long: str = "drop"  # drop | truncate | error


@dataclass
class PrefConfig:
    """reward / dpo: preference pairs {"prompt", "chosen", "rejected"} (text, or chat messages)."""

    data: str | None = None  # training JSONL
    eval: str | None = None  # dev JSONL: pairwise / reward accuracy after training
    max_len: int | None = None  # tokens of prompt + completion; None -> the model's context
    too_long: str = "drop"  # drop | truncate (the completion's end) | error
    enable_thinking: bool = True  # chat rows: render as in thinking mode (False: Qwen3's hard switch)


@dataclass
class RewardConfig:
    """reward: the Bradley–Terry objective (a row's "margin" is subtracted when present)."""

    center_coef: float | None = None  # centring term c·mean((r_c + r_r)²); 0.01 in TRL's docs


@dataclass
class DPOConfig:
    """dpo: the preference loss; reference log-probs are computed once before training."""

    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid | ipo | hinge
    label_smoothing: float = 0.0  # cDPO (sigmoid only)
    reference: str | None = None  # reference model; None -> the starting model (with LoRA: adapters off)
    nll_weight: float = 0.0  # + w·NLL of the chosen tokens (TRL's "sft" loss term; iterative RPO for reasoning)


@dataclass
class GRPOConfig:
    """grpo: prompts, reward functions, sampling with the engine, the clipped objective."""

    prompts: str | None = None  # JSONL {"prompt": text or messages, + fields rewards read: answer, tests}
    synthetic: int | None = None  # instead of prompts: N built-in problems (with answers)
    synthetic_kinds: list = field(default_factory=lambda: ["arithmetic"])
    synthetic_seed: int = 0
    rewards: list = field(default_factory=lambda: ["math"])  # math | format | code | rbrm:RUBRIC | model:DIR
    reward_weights: list | None = None
    num_generations: int = 8  # G completions per prompt
    prompts_per_step: int = 4  # prompts per generation batch
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    enable_thinking: bool = True
    loss_type: str = "dapo"  # grpo | bnpo | dr_grpo | dapo
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO)
    beta: float = 0.0  # KL weight (k3 estimator); 0 = no reference model
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None -> epsilon (DAPO: 0.28)
    num_iterations: int = 1  # optimizer steps per generation batch (μ)
    query_selection: bool = False  # Qwen2.5: drop zero-variance groups, highest reward variance first
    eval_problems: int | None = None  # synthetic: grade N held-out problems greedily before and after


MODEL = "model"  # pretrain's model section is a Config preset plus Config fields, checked against Config
TRAINERS: dict[str, dict[str, type | None]] = {
    "pretrain": {"model": None, "data": DataConfig, "train": TrainConfig},
    "sft": {"model": BaseModelConfig, "sft": SFTConfig, "lora": LoraConfig, "train": TrainConfig},
    "finetune": {"model": BaseModelConfig, "task": TaskConfig, "train": TrainConfig},
    "reward": {"model": BaseModelConfig, "pref": PrefConfig, "reward": RewardConfig, "train": TrainConfig},
    "dpo": {"model": BaseModelConfig, "pref": PrefConfig, "dpo": DPOConfig, "lora": LoraConfig, "train": TrainConfig},
    "grpo": {"model": BaseModelConfig, "grpo": GRPOConfig, "lora": LoraConfig, "train": TrainConfig},
    "vl": {"vl": VLConfig, "train": TrainConfig},
    "distill": {"model": BaseModelConfig, "distill": DistillConfig, "sft": SFTConfig, "train": TrainConfig},
    "post": {"model": BaseModelConfig, "post": PostConfig, "sft": SFTConfig, "grpo": GRPOConfig, "train": TrainConfig},
}
DEFAULT_RECIPES = {"pretrain": "qwen3-shakespeare", "sft": "sft-qwen3", "finetune": "finetune-gpt1", "reward": "reward-qwen3",
                   "dpo": "dpo-qwen3", "grpo": "grpo-qwen3", "vl": "qwen-vl-tiny",
                   "distill": "distill-qwen3", "post": "qwen3-post"}
TOO_LONG = ("drop", "truncate", "error")


def _one_of(*choices: str) -> tuple[Any, str]:
    return (lambda v: v in choices), "one of " + ", ".join(choices)


_POSITIVE = (lambda v: v is None or v >= 1, ">= 1")
_NON_NEGATIVE = (lambda v: v is None or v >= 0, ">= 0")
_FRACTION = (lambda v: 0 <= v <= 1, "in [0, 1]")
# (check, wanted) per `section.key`; the message names what was wanted
_RANGES: dict[str, tuple[Any, str]] = {
    "train.seq_len": (lambda v: v >= 2, ">= 2"), "train.batch_size": _POSITIVE, "train.micro_batch": _POSITIVE,
    "train.max_steps": _POSITIVE, "train.epochs": (lambda v: v is None or v > 0, "> 0"),
    "train.lr": (lambda v: 0 < v < 10, "in (0, 10)"), "train.min_lr": _NON_NEGATIVE, "train.warmup_steps": _NON_NEGATIVE,
    "train.warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"), "train.schedule": _one_of("cosine", "wsd", "linear", "constant"),
    "train.decay_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"), "train.weight_decay": (lambda v: 0 <= v < 10, "in [0, 10)"),
    "train.beta1": (lambda v: 0 <= v < 1, "in [0, 1)"), "train.beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.grad_clip": _NON_NEGATIVE, "train.dtype": _one_of("auto", "bf16", "fp32"), "train.dist": _one_of("ddp", "fsdp"),
    "train.moe_balance": _one_of("micro", "global"),
    "train.threads": _NON_NEGATIVE, "train.log_interval": _POSITIVE, "train.eval_interval": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "train.eval_tokens": _POSITIVE, "train.sample_interval": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "train.sample_tokens": _NON_NEGATIVE, "train.temperature": _NON_NEGATIVE, "train.top_k": _NON_NEGATIVE,
    "train.ckpt_interval": (lambda v: v >= 0, ">= 0 (0 = only at the end)"), "train.keep_last": _POSITIVE,
    "train.ckpt_format": (lambda v: v in ("gathered", "sharded"), "gathered or sharded"),
    "train.peak_flops": (lambda v: v is None or v > 0, "> 0"),
    "data.val_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"), "data.on_error": (lambda v: v in ("fail", "skip"), "fail or skip"),
    "data.train_vocab": (lambda v: v is None or 256 < v <= 1_000_000, "in 257..1000000"),
    "sft.synthetic": _POSITIVE, "sft.think_ratio": _FRACTION, "sft.flag_prob": _FRACTION,
    "sft.max_len": (lambda v: v is None or v >= 2, ">= 2"),
    "sft.too_long": _one_of(*TOO_LONG), "sft.eval_reasoning": _POSITIVE, "sft.eval_max_new_tokens": _POSITIVE,
    "lora.r": _POSITIVE, "lora.alpha": (lambda v: v > 0, "> 0"), "lora.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "task.task": (lambda v: v is None or v in ("classification", "entailment", "similarity", "multiple-choice"),
                  "one of classification, entailment, similarity, multiple-choice"),
    "task.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"), "task.max_len": (lambda v: v is None or v >= 3, ">= 3"),
    "task.too_long": _one_of(*TOO_LONG),
    "pref.max_len": (lambda v: v is None or v >= 2, ">= 2"), "pref.too_long": _one_of(*TOO_LONG),
    "reward.center_coef": _NON_NEGATIVE, "dpo.beta": (lambda v: v > 0, "> 0"), "dpo.loss": _one_of("sigmoid", "ipo", "hinge"),
    "dpo.label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"), "dpo.nll_weight": _NON_NEGATIVE, "grpo.synthetic": _POSITIVE,
    "grpo.num_generations": (lambda v: v >= 2, ">= 2 (advantages compare completions of one prompt)"),
    "grpo.prompts_per_step": _POSITIVE, "grpo.max_new_tokens": _POSITIVE, "grpo.temperature": (lambda v: v > 0, "> 0 (sampling)"),
    "grpo.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"), "grpo.top_k": _NON_NEGATIVE,
    "grpo.loss_type": _one_of("grpo", "bnpo", "dr_grpo", "dapo"), "grpo.scale_rewards": _one_of("group", "batch", "none"),
    "grpo.beta": _NON_NEGATIVE, "grpo.epsilon": (lambda v: 0 < v < 1, "in (0, 1)"),
    "grpo.epsilon_high": (lambda v: v is None or v > 0, "> 0"),
    "grpo.num_iterations": _POSITIVE, "grpo.eval_problems": _POSITIVE,
}  # fmt: skip


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


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """`value` as the field's type (strings from the command line are parsed); a UserError otherwise."""
    args = typing.get_args(hint)
    optional = type(None) in args
    kind = next((a for a in args if a is not type(None)), hint) if args else hint
    kind = typing.get_origin(kind) or kind
    if isinstance(value, str) and kind is not str:
        value = _scalar(value) if kind is not list or value.strip().startswith("[") else [s.strip() for s in value.split(",") if s.strip()]
    elif isinstance(value, str) and optional and value.lower() in ("null", "none", "~"):
        value = None
    if value is None:
        if optional:
            return None
        raise UserError(f"{key} cannot be empty (null)")
    if kind is bool and not isinstance(value, bool):
        raise UserError(f"{key} must be true or false, not '{value}'")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{key} must be a whole number, not '{value}'")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key} must be a number, not '{value}'")
        value = float(value)
    if kind is str and not isinstance(value, str):
        raise UserError(f"{key} must be a string, not {value!r}; quote it in YAML")
    if kind is list and not isinstance(value, list):
        raise UserError(f"{key} must be a list, not {value!r}")
    return value


def build_section(cls: type, values: dict[str, Any] | None, section: str):
    """A section dataclass from a mapping: unknown keys, types and ranges checked."""
    if values is not None and not isinstance(values, dict):
        raise UserError(f"recipe section '{section}' must be a mapping of settings, not {values!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in (values or {}).items():
        if k not in hints:
            raise UserError(f"unknown {section} setting '{k}'.{closest(str(k), hints)}")
        v = _check_type(v, hints[k], f"{section}.{k}")
        check = _RANGES.get(f"{section}.{k}")
        if check and not check[0](v):
            raise UserError(f"{section}.{k} = {v!r} is out of range; it must be {check[1]}")
        kwargs[k] = v
    return cls(**kwargs)


def check_model_section(values: dict[str, Any]) -> dict[str, Any]:
    """pretrain's model section: a known preset and Config fields (checked by building the Config)."""
    model = dict(values or {})
    preset = model.pop("preset", "qwen3-tiny")
    known = {f.name for f in dataclasses.fields(Config)} - {"name"}
    for k in model:
        if k not in known:
            raise UserError(f"unknown model setting '{k}'.{closest(str(k), known | {'preset'})}")
    model = {k: _scalar(v) if isinstance(v, str) else v for k, v in model.items()}
    try:
        Config.from_name(str(preset), **model)
    except (TypeError, ValueError) as e:
        raise UserError(f"model settings {model} do not make a valid {preset} config ({e})") from None
    return {"preset": preset, **model}


def model_name(model: dict[str, Any]) -> str:
    """pretrain's model name: the preset, plus every override it was built with (`gpt2-small+n_layer=4`)."""
    shown = {k: (f"{v:g}" if isinstance(v, float) else str(v).replace(" ", "")) for k, v in model.items() if k != "preset"}
    return "+".join([str(model["preset"]), *(f"{k}={v}" for k, v in shown.items())])


@dataclass
class Recipe:
    """A resolved run: its trainer, one validated object per section, optional stages (pretrain)."""

    name: str
    trainer: str
    sections: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, section: str) -> Any:  # recipe.train, recipe.data, recipe.model, ...
        sections = self.__dict__.get("sections") or {}
        if section in sections:
            return sections[section]
        raise AttributeError(section)

    def stage(self, index: int) -> Recipe:
        """The recipe of stage `index`: this recipe with the stage's sections merged over it."""
        spec = self.stages[index]
        raw = copy.deepcopy(self.raw)
        raw.pop("stages", None)
        for section in TRAINERS[self.trainer]:
            raw[section] = {**(raw.get(section) or {}), **(spec.get(section) or {})}
        raw["name"] = f"{self.name}/{spec['name']}"
        return Recipe.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "trainer": self.trainer}
        for section, value in self.sections.items():
            out[section] = dict(value) if isinstance(value, dict) else dataclasses.asdict(value)
        if self.stages:
            out["stages"] = self.stages
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], trainer: str | None = None) -> Recipe:
        if not isinstance(raw, dict):
            raise UserError("a recipe must be a YAML mapping of sections (model, train, ...)")
        kind = raw.get("trainer", trainer or "pretrain")
        if kind not in TRAINERS:
            raise UserError(f"unknown trainer '{kind}' in the recipe.{closest(str(kind), TRAINERS)}")
        if trainer is not None and kind != trainer:
            raise UserError(f"this is a {kind} recipe; run it with 'gptqwen {kind}', or pick a {trainer} recipe")
        schema = TRAINERS[kind]
        allowed = {"name", "description", "trainer", "stages", *schema}
        for key in raw:
            if key not in allowed:
                raise UserError(f"unknown recipe section '{key}' for {kind}.{closest(str(key), allowed)} "
                                f"Sections: {', '.join(sorted(allowed))}")  # fmt: skip
        sections = {s: check_model_section(raw.get(s)) if c is None else build_section(c, raw.get(s), s) for s, c in schema.items()}
        stages = list(raw.get("stages") or [])
        for i, s in enumerate(stages):
            if not isinstance(s, dict) or not s.get("name") or set(s) - {"name", *schema}:
                raise UserError(f"stage {i} must be a mapping with a name and optional {', '.join(schema)} sections")
        if kind == "pretrain" and sections["model"].get("max_seq_len", sections["train"].seq_len) < sections["train"].seq_len:
            raise UserError(f"train.seq_len {sections['train'].seq_len} exceeds model.max_seq_len {sections['model']['max_seq_len']}")
        recipe = cls(name=str(raw.get("name", "run")), trainer=kind, sections=sections, stages=stages, raw=copy.deepcopy(raw))
        for i in range(len(stages)):  # every stage is checked now, not when it starts
            recipe.stage(i)
        return recipe


def recipe_names(trainer: str | None = None) -> list[str]:
    """Built-in recipes (all, or those of one trainer)."""
    root = importlib.resources.files("gptqwen") / "recipes"
    names = sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))
    return [n for n in names if trainer is None or (_builtin(n).get("trainer") or "pretrain") == trainer]


def _builtin(name: str) -> dict[str, Any]:
    return yaml.safe_load((importlib.resources.files("gptqwen") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")) or {}


def load_recipe(name_or_path: str | None = None, overrides: list[str] | None = None, preset: str | None = None,
                trainer: str = "pretrain") -> Recipe:  # fmt: skip
    """A built-in recipe by name or a YAML file (default: the trainer's), with overrides applied and checked.

    `preset` (pretrain's `--preset`) replaces the recipe's model section and names the recipe (and so its default
    run folder) after the model, overrides included; `overrides` are `key=value` strings."""
    spec = name_or_path or DEFAULT_RECIPES[trainer]
    path = Path(spec).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"recipe file '{spec}' does not exist")
        text = path.read_text(encoding="utf-8")
    else:
        names = recipe_names(trainer)
        if spec not in names:
            raise UserError(f"unknown recipe '{spec}' for {trainer}.{closest(spec, names)} Built-in {trainer} recipes: {', '.join(names)}")
        text = (importlib.resources.files("gptqwen") / "recipes" / f"{spec}.yaml").read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"recipe '{spec}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"recipe '{spec}' must be a YAML mapping of sections (model, train, ...)")
    raw = copy.deepcopy(raw)
    if preset:
        raw["model"] = {"preset": preset}  # a new preset replaces the recipe's model overrides
    for item in overrides or []:
        apply_override(raw, item, raw.get("trainer", trainer))
    recipe = Recipe.from_dict(raw, trainer)
    if preset:  # the recipe's own name would describe its model, not this one
        recipe.name = model_name(recipe.model)
    return recipe


def apply_override(raw: dict[str, Any], item: str, trainer: str) -> None:
    """Set `section.key=value` (or a bare unique `key=value`) in a raw recipe, and in every stage that sets it."""
    schema = TRAINERS.get(trainer, TRAINERS["pretrain"])
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"override '{item}' must look like section.key=value, e.g. train.lr=1e-3")
    if "." in key:
        section, name = key.split(".", 1)
        if section not in schema:
            raise UserError(f"override '{item}': section must be one of {', '.join(schema)}.{closest(section, schema)}")
    else:
        owners = [s for s, cls in schema.items() if cls is not None and key in {f.name for f in dataclasses.fields(cls)}]
        if len(owners) != 1:
            every = [f"{s}.{f.name}" for s, cls in schema.items() if cls is not None for f in dataclasses.fields(cls)]
            raise UserError(f"override '{item}': unknown or ambiguous key; write section.key ({', '.join(f'{s}.*' for s in schema)})."
                            f"{closest(key, [e.split('.', 1)[1] for e in every])}")  # fmt: skip
        section, name = owners[0], key
    target = raw.get(section) or {}
    raw[section] = target
    target[name] = value
    for stage in raw.get("stages") or []:  # a command-line override wins over every stage's setting too
        if isinstance(stage, dict) and name in (stage.get(section) or {}):
            stage[section][name] = value
