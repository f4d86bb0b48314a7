"""`gptqwen distill`: strong-to-weak distillation — off-policy (teacher answers in both modes as SFT data), then
on-policy (the student samples; per-token KL to the teacher's distribution on its own samples).

    gptqwen distill --teacher runs/post/4-general-rl --from qwen3-tiny --tokenizer tok/ --out distill/
    gptqwen distill -c distill-qwen3 --teacher big/ --from small/ distill.kl=forward distill.synthetic=500
    gptqwen distill --teacher big/ --from small/ --out d/ --resume        # continue an interrupted run exactly

Teacher and student are any two loadable models with the same tokenizer (checked before any work). The recipe's
stages run in `OUT/1-off-policy/` and `OUT/2-on-policy/`, the second from the first's weights; `OUT/stages.json`
records the finished ones. The final student is the last stage's folder (an HF checkpoint with its tokenizer).
"""

from __future__ import annotations

import argparse

from gptqwen.commands import align_flags
from gptqwen.commands.recipe_args import add_recipe_arguments, resolve_recipe
from gptqwen.utils import print_json

SHORT = ("--from", "--tokenizer", "--max-steps", "--batch-size", "--lr", "--seed", "--device", "--threads")
FLAGS: align_flags.Table = {
    "--teacher": ("distill.teacher", "the teacher: run dir, HF dir, .gguf or preset (the student's tokenizer)"),
    "--prompts": ("distill.prompts", "prompt JSONL: {\"prompt\": text or messages, \"answer\"?} rows"),
    "--synthetic": ("distill.synthetic", "instead of --prompts: N built-in problems with answers"),
    "--think-ratio": ("distill.think_ratio", "share of thinking-mode answers and samples"),
    "--kl": ("distill.kl", "on-policy divergence: reverse (student || teacher) or forward (teacher || student)"),
    "--prompts-per-step": ("distill.prompts_per_step", "on-policy: student samples per step"),
    "--max-new-tokens": ("distill.max_new_tokens", "on-policy: sample length"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p, "distill", out_default="distill", shorthands=SHORT, doc=__doc__)
    align_flags.add_flags(p, FLAGS, "teacher, prompts and divergence")


def run(args: argparse.Namespace) -> int:
    args.set[:0] = align_flags.overrides(args, FLAGS)
    recipe = resolve_recipe(args, "distill")
    if recipe is None:
        return 0
    from gptqwen.align.distill import run_distill

    summary = run_distill(recipe, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet or args.json,
                          stop_at=args.stop_at)  # fmt: skip
    return print_stages(args, summary)


def print_stages(args: argparse.Namespace, summary: dict) -> int:
    """The stages' summary: JSON with --json, the resume hint after --stop-at, else one line per stage."""
    if args.json:
        print_json(summary)
        return 0
    for name, s in summary["stages"].items():
        held = s.get("heldout") or {}
        acc = "; ".join(f"{m.replace('_', '-')} {v['accuracy']:.3f} ± {v['stderr']:.3f}" for m, v in held.items())
        print(f"{name}: {s.get('steps')} steps, final loss {s.get('loss', float('nan')):.4f}" + (f"; held-out {acc}" if acc else ""))
    if "out" not in summary:
        print(f"stopped in stage {summary['stopped_in']} at step {summary['step']} of {summary['steps']}; "
              f"finish with --resume --out {args.out}")  # fmt: skip
    else:
        print(f"final model: {summary['out']}")
    return 0
