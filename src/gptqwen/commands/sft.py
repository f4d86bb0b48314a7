"""`gptqwen sft`: supervised chat fine-tuning on conversations, full or LoRA, with packing.

    gptqwen sft --data conversations.jsonl --from runs/qwen3 --out sft/
    gptqwen sft --synthetic 4000 --from qwen3-tiny --tokenizer tok/ --out sft/ --eval-reasoning 200
    gptqwen sft --data chats.jsonl --from hf_dir --lora-r 8 --lora-alpha 16 --lora-targets q,k,v,o
    gptqwen sft -c sft-qwen3 model.base=qwen3-tiny sft.synthetic=500 train.activation_checkpointing=true
    gptqwen sft ... --out sft/ --resume                    # continue an interrupted run exactly

Rows: {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...,
"reasoning_content": ...?, "tool_calls": [...]?}, ...], "tools": [...]?}. Every flag sets a recipe key
(shown in brackets in --help); `--print-config` shows the resolved recipe.
"""

from __future__ import annotations

import argparse

from gptqwen.commands.recipe_args import add_recipe_arguments, resolve_recipe
from gptqwen.utils import print_json

FLAGS = ("--data", "--synthetic", "--think-ratio", "--synthetic-kinds", "--flag-prob", "--max-len", "--too-long", "--no-packing",
         "--from", "--tokenizer", "--from-scratch", "--epochs", "--max-steps", "--batch-size", "--lr", "--min-lr", "--warmup",
         "--schedule", "--weight-decay", "--grad-clip", "--seed", "--device", "--threads", "--lora-r", "--lora-alpha",
         "--lora-dropout", "--lora-targets", "--eval-reasoning", "--eval-seed", "--eval-max-new-tokens")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p, "sft", out_default="sft", shorthands=FLAGS, doc=__doc__)


def run(args: argparse.Namespace) -> int:
    recipe = resolve_recipe(args, "sft")
    if recipe is None:  # --list or --print-config did the work
        return 0
    from gptqwen.finetune.sft_train import run_sft

    after = _evaluator(recipe) if recipe.sft.eval_reasoning else None
    summary = run_sft(recipe, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet or args.json,
                      stop_at=args.stop_at, after_training=after)  # fmt: skip
    if args.json:
        print_json(summary)
        return 0
    if "out" not in summary:
        print(f"stopped at step {summary['step']} of {summary['steps']}; finish with --resume --out {args.out}")
        return 0
    print(f"trained {summary['steps']} steps on {summary['kept']} conversations "
          f"({summary['thinking']} thinking, {summary['direct']} direct); final loss {summary['final_loss']:.4f}")
    if summary["dropped_too_long"]:
        print(f"dropped {summary['dropped_too_long']} conversations longer than the context "
              f"(lines {summary['dropped_lines'][:10]})")
    if summary["truncated"]:
        print(f"truncated {summary['truncated']} conversations to the context (their end was cut)")
    if "heldout" in summary:
        h = summary["heldout"]
        for mode in ("thinking", "non_thinking"):
            kinds = ", ".join(f"{k} {v:.3f}" for k, v in h[mode]["by_kind"].items())
            print(f"held-out accuracy, {mode.replace('_', '-')}: {h[mode]['accuracy']:.3f} ({kinds}; n={h[mode]['n']})")
    print(f"saved to {summary['out']} (metrics in {summary['run_dir']}/metrics.jsonl)")
    return 0


def _evaluator(recipe):
    s = recipe.sft

    def evaluate(model, tokenizer, rows: list[tuple[int, dict]]) -> dict:
        from gptqwen.finetune.evaluate import compare_modes, heldout_problems, training_questions

        items = heldout_problems(s.eval_reasoning, s.eval_seed, training_questions(rows), tuple(s.synthetic_kinds))
        return {"heldout": compare_modes(model, tokenizer, items, s.eval_max_new_tokens)}
    return evaluate
