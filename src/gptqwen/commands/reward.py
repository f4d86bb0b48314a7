"""`gptqwen reward train|score`: a reward model (scalar head, Bradley–Terry loss) on preference pairs.

    gptqwen reward train --from sft/ --data prefs.jsonl --eval dev.jsonl --out rm/ [--center-coef 0.01]
    gptqwen reward train -c reward-qwen3 model.base=sft/ pref.data=prefs.jsonl train.lr=1e-4 --json
    gptqwen reward score --model rm/ --data dev.jsonl --json     # pairs: accuracy; {"prompt","completion"}: rewards

Rows: {"prompt", "chosen", "rejected", "margin"?} as text or chat messages (see gptqwen.align.prefs).
A trained folder also serves GRPO as a reward function: `grpo.rewards=[model:rm/]`.
"""

from __future__ import annotations

import argparse

from gptqwen.commands import align_flags
from gptqwen.commands.recipe_args import add_recipe_arguments, resolve_recipe
from gptqwen.errors import UserError
from gptqwen.utils import print_json

SHORT = ("--from", "--tokenizer", "--epochs", "--max-steps", "--batch-size", "--lr", "--min-lr", "--warmup", "--schedule",
         "--weight-decay", "--grad-clip", "--seed", "--device", "--threads")  # fmt: skip
FLAGS: align_flags.Table = {
    "--data": ("pref.data", "train: preference JSONL; score: rows to score"),
    "--eval": ("pref.eval", "dev preference JSONL: pairwise accuracy at each eval and at the end"),
    "--max-len": ("pref.max_len", "tokens of prompt + completion (default: the model's context)"),
    "--too-long": ("pref.too_long", "longer pairs: drop, truncate the completions, or error"),
    "--no-thinking": ("pref.enable_thinking", "render chat rows in non-thinking mode (as generated with thinking off)", "false"),
    "--center-coef": ("reward.center_coef", "centring term c·mean((r_c + r_r)²)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["train", "score"], help="train a reward model, or score rows with one")
    add_recipe_arguments(p, "reward", out_default="reward", shorthands=SHORT, doc=__doc__)
    align_flags.add_flags(p, FLAGS, "preference data and loss")
    p.add_argument("--model", help="score: a reward model folder written by 'gptqwen reward train'")


def run(args: argparse.Namespace) -> int:
    if args.action == "score":
        if not args.model or not args.align_data:
            raise UserError("gptqwen reward score needs --model RM_DIR and --data rows.jsonl")
        from gptqwen.align.reward import score_file

        result = score_file(args.model, args.align_data, device=getattr(args, "short_device", None))
        if args.json:
            print_json(result)
        elif "accuracy" in result:
            print(f"{result['pairs']} pairs: accuracy {result['accuracy']:.3f}, mean margin {result['mean_margin']:.3f}")
        else:
            for r in result["rewards"]:
                print(f"{r:.4f}")
        return 0
    args.set[:0] = align_flags.overrides(args, FLAGS)
    recipe = resolve_recipe(args, "reward")
    if recipe is None:
        return 0
    from gptqwen.align.reward import run_reward_training

    summary = run_reward_training(recipe, args.out, resume=args.resume, overwrite=args.overwrite,
                                  quiet=args.quiet or args.json, stop_at=args.stop_at)  # fmt: skip
    return align_flags.report(args, summary, lambda s: [
        f"trained {s['steps']} steps on {s['pairs']} pairs; final loss {s['loss']:.4f}, accuracy {s['accuracy']:.3f}"
        + (f"; dev accuracy {s['dev_accuracy']:.3f}" if "dev_accuracy" in s else "")])
