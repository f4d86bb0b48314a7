"""The options every trainer verb shares (`pretrain`, `sft`, `finetune`, and the trainers to come).

    gptqwen <trainer> -c RECIPE [section.key=value ...] [--set section.key=value] [--print-config]
                      [--out DIR] [--resume | --overwrite] [--stop-at STEP] [--quiet] [--json] [--list]

The flat flags of a verb (`--lr`, `--epochs`, `--from`, `--data`, ...) are shorthands: each sets one
recipe key (`SHORTHANDS`), so the defaults live in one place — the trainer's default recipe — and the
resolved recipe shows every value (`--print-config`). Order of precedence: the recipe, then the
shorthand flags, then `section.key=value` overrides.
"""

from __future__ import annotations

import argparse
import importlib.resources

import yaml

from gptqwen.errors import UserError
from gptqwen.train.recipe import DEFAULT_RECIPES, Recipe, load_recipe, recipe_names
from gptqwen.utils import refuse_file_in_path

WARMUP = "train.warmup"  # not a key: --warmup sets warmup_ratio (< 1) or warmup_steps (>= 1)

# flag -> (recipe key per trainer, or one key for all; help; argparse action for on/off flags)
SHORTHANDS: dict[str, tuple[dict[str, str] | str, str, str | None]] = {
    "--from": ("model.base", "run dir, HF dir, .gguf or preset to start from", None),
    "--tokenizer": ("model.tokenizer", "tokenizer.json or preset, when --from has none", None),
    "--from-scratch": ("model.from_scratch", "same architecture and tokenizer as --from, freshly initialised (baseline)", "true"),
    "--data": ({"sft": "sft.data", "finetune": "task.data"}, "training JSONL", None),
    "--synthetic": ("sft.synthetic", "instead of --data: N built-in reasoning conversations (arithmetic and logic, "
                    "thinking and direct answers mixed)", None),
    "--think-ratio": ("sft.think_ratio", "--synthetic: share of thinking examples", None),
    "--synthetic-kinds": ("sft.synthetic_kinds", "--synthetic: problem kinds to mix (comma-separated)", None),
    "--flag-prob": ("sft.flag_prob", "chance of appending /think or /no_think to the last user turn of a row without one", None),
    "--max-len": ({"sft": "sft.max_len", "finetune": "task.max_len"}, "tokens per row / sequence (default: the model's context)", None),
    "--too-long": ({"sft": "sft.too_long", "finetune": "task.too_long"}, "rows over --max-len: drop (counted), truncate, or error", None),
    "--no-packing": ("sft.packing", "one conversation per row, right-padded", "false"),
    "--task": ("task.task", "classification, entailment, similarity or multiple-choice", None),
    "--eval": ("task.eval", "dev JSONL, scored after training", None),
    "--labels": ("task.labels", "comma-separated label set (default: the labels of --data, sorted)", None),
    "--lm-coef": ("task.lm_coef", "λ in L = L_task + λ·L_LM (GPT-1: 0.5)", None),
    "--dropout": ("task.dropout", "dropout before the head", None),
    "--lora-r": ("lora.r", "LoRA adapter rank; trains only the adapters, merged into the export", None),
    "--lora-alpha": ("lora.alpha", "LoRA scale numerator", None),
    "--lora-dropout": ("lora.dropout", "dropout on the adapters' input", None),
    "--lora-targets": ("lora.targets", "projections: q,k,v,o,gate,up,down or layer names", None),
    "--eval-reasoning": ("sft.eval_reasoning", "after training, grade N held-out synthetic problems with thinking on and off", None),
    "--eval-seed": ("sft.eval_seed", "seed of the held-out problems", None),
    "--eval-max-new-tokens": ("sft.eval_max_new_tokens", "tokens to generate per held-out problem", None),
    "--epochs": ("train.epochs", "passes over the data (used when train.max_steps is unset)", None),
    "--max-steps": ("train.max_steps", "optimizer steps (wins over --epochs)", None),
    "--batch-size": ("train.batch_size", "rows per optimizer step", None),
    "--lr": ("train.lr", "peak learning rate", None),
    "--min-lr": ("train.min_lr", "learning rate at the end of the schedule", None),
    "--warmup": (WARMUP, "warmup: a fraction of the steps, or steps if >= 1", None),
    "--schedule": ("train.schedule", "cosine, wsd, linear or constant", None),
    "--weight-decay": ("train.weight_decay", "AdamW weight decay on matrices", None),
    "--grad-clip": ("train.grad_clip", "clip the gradient norm (0 = off)", None),
    "--seed": ("train.seed", "seed of the data order, initialisation and dropout", None),
    "--device": ("train.device", "cpu, cuda, mps (default: best available)", None),
    "--threads": ("train.threads", "torch CPU threads", None),
}  # fmt: skip


def _dest(flag: str) -> str:
    return "short_" + flag.lstrip("-").replace("-", "_")


def _key(flag: str, trainer: str) -> str | None:
    key = SHORTHANDS[flag][0]
    return key.get(trainer) if isinstance(key, dict) else key


def add_recipe_arguments(parser: argparse.ArgumentParser, trainer: str, out_default: str | None,
                         shorthands: tuple[str, ...] = (), doc: str | None = None) -> None:  # fmt: skip
    """The shared trainer options, plus the named shorthand flags (each a recipe key); `doc` (the verb
    module's docstring) becomes the help's epilog after its first paragraph."""
    if doc:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = doc.split("\n\n", 1)[1]
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. train.lr=1e-3")
    r = parser.add_argument_group("recipe and run")
    r.add_argument("--config", "-c", help=f"built-in recipe name or YAML file (default: {DEFAULT_RECIPES[trainer]})")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override (repeatable)")
    r.add_argument("--print-config", action="store_true", help="print the resolved recipe as YAML and exit")
    r.add_argument("--list", action="store_true", help="list the built-in recipes of this trainer and exit")
    r.add_argument("--out", default=out_default, help=f"run folder (default: {out_default or 'runs/<recipe name>'})")
    r.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out, exactly")
    r.add_argument("--overwrite", action="store_true", help="delete the checkpoints in --out and start over")
    r.add_argument("--stop-at", type=int, metavar="STEP", help="save a checkpoint and stop at this step (finish later with --resume)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or log lines (metrics still go to metrics.jsonl)")
    r.add_argument("--json", action="store_true", help="print a JSON summary at the end (implies --quiet)")
    if shorthands:
        s = parser.add_argument_group("shorthands (each sets the recipe key named in brackets)")
        for flag in shorthands:
            key, text, on_off = SHORTHANDS[flag]
            shown = "train.warmup_ratio or train.warmup_steps" if _key(flag, trainer) == WARMUP else _key(flag, trainer)
            if on_off:
                s.add_argument(flag, dest=_dest(flag), action="store_const", const=on_off, help=f"{text} [{shown}={on_off}]")
            else:
                s.add_argument(flag, dest=_dest(flag), metavar=flag.lstrip("-").upper().replace("-", "_"), help=f"{text} [{shown}]")
    # overrides may come before and after options (`--out x train.lr=1e-3 --resume`)
    parser.parse_args = parser.parse_intermixed_args  # type: ignore[method-assign]


def shorthand_overrides(args: argparse.Namespace, trainer: str) -> list[str]:
    """`key=value` overrides for the shorthand flags that were given."""
    found = []
    for flag in SHORTHANDS:
        value = getattr(args, _dest(flag), None)
        key = _key(flag, trainer)
        if value is None or key is None:
            continue
        if key == WARMUP:
            try:
                amount = float(value)
            except ValueError:
                raise UserError(f"--warmup must be a number (a fraction of the steps, or steps if >= 1), not '{value}'") from None
            found += [f"train.warmup_steps={round(amount)}", "train.warmup_ratio=0"] if amount >= 1 else \
                ["train.warmup_steps=0", f"train.warmup_ratio={value}"]  # fmt: skip
        else:
            found.append(f"{key}={value}")
    return found


def resolve_recipe(args: argparse.Namespace, trainer: str, preset: str | None = None) -> Recipe | None:
    """The verb's validated recipe: -c (or the default), shorthand flags, then overrides.

    None when --list or --print-config already did the verb's work (the caller exits 0)."""
    if args.list:
        list_recipes(trainer)
        return None
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; choose one")
    overrides = [*shorthand_overrides(args, trainer), *args.set, *args.overrides]
    recipe = load_recipe(args.config, overrides, preset=preset, trainer=trainer)
    if args.print_config:
        print(recipe.to_yaml(), end="")
        return None
    args.out = args.out or f"runs/{recipe.name}"
    refuse_file_in_path(args.out, "the run folder --out")  # before any work, not a traceback at mkdir
    return recipe


def list_recipes(trainer: str) -> None:
    for name in recipe_names(trainer):
        raw = yaml.safe_load((importlib.resources.files("gptqwen") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8"))
        print(f"{name:<24} {raw.get('description', '')}")
