"""`gptqwen dpo`: direct preference optimisation (sigmoid / IPO / hinge, cDPO label smoothing, LoRA optional).

    gptqwen dpo --from sft/ --data prefs.jsonl --out dpo/
    gptqwen dpo --from sft/ --data prefs.jsonl --eval dev.jsonl --beta 0.1 --loss ipo --lora-r 8 --json
    gptqwen dpo -c dpo-qwen3 model.base=sft/ pref.data=prefs.jsonl dpo.label_smoothing=0.1
    gptqwen dpo ... --out dpo/ --resume                    # continue an interrupted run exactly

Rows: {"prompt", "chosen", "rejected"} as text, or chat messages (see gptqwen.align.prefs); `gptqwen synth
rejection` writes them. The reference model's log-probs are computed once before training.
"""

from __future__ import annotations

import argparse

from gptqwen.commands import align_flags
from gptqwen.commands.recipe_args import add_recipe_arguments, resolve_recipe

SHORT = ("--from", "--tokenizer", "--epochs", "--max-steps", "--batch-size", "--lr", "--min-lr", "--warmup", "--schedule",
         "--weight-decay", "--grad-clip", "--seed", "--device", "--threads", "--lora-r", "--lora-alpha", "--lora-dropout",
         "--lora-targets")  # fmt: skip
FLAGS: align_flags.Table = {
    "--data": ("pref.data", "preference JSONL: {\"prompt\", \"chosen\", \"rejected\"} rows"),
    "--eval": ("pref.eval", "dev preference JSONL: reward accuracy at each eval and at the end"),
    "--max-len": ("pref.max_len", "tokens of prompt + completion (default: the model's context)"),
    "--too-long": ("pref.too_long", "longer pairs: drop, truncate the completions, or error"),
    "--no-thinking": ("pref.enable_thinking", "render chat rows in non-thinking mode (as generated with thinking off)", "false"),
    "--beta": ("dpo.beta", "β: strength of the pull towards the reference"),
    "--loss": ("dpo.loss", "sigmoid (DPO), ipo or hinge"),
    "--label-smoothing": ("dpo.label_smoothing", "cDPO: assumed share of flipped labels (sigmoid loss)"),
    "--reference": ("dpo.reference", "reference model (default: the starting model)"),
    "--nll-weight": ("dpo.nll_weight", "weight of the chosen completions' NLL added to the loss (RPO)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p, "dpo", out_default="dpo", shorthands=SHORT, doc=__doc__)
    align_flags.add_flags(p, FLAGS, "preference data and loss")


def run(args: argparse.Namespace) -> int:
    args.set[:0] = align_flags.overrides(args, FLAGS)
    recipe = resolve_recipe(args, "dpo")
    if recipe is None:
        return 0
    from gptqwen.align.dpo import run_dpo

    summary = run_dpo(recipe, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet or args.json,
                      stop_at=args.stop_at)  # fmt: skip
    return align_flags.report(args, summary, lambda s: [
        f"trained {s['steps']} steps on {s['pairs']} pairs; final loss {s['loss']:.4f}, reward accuracy "
        f"{s['reward_accuracy']:.3f}, margin {s['margin']:.3f}"
        + (f"; dev reward accuracy {s['dev_reward_accuracy']:.3f}" if "dev_reward_accuracy" in s else "")])
