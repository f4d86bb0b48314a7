"""`gptqwen finetune`: GPT-1 task-aware fine-tuning of a pretrained model.

    gptqwen finetune --task entailment --data train.jsonl --eval dev.jsonl --from runs/shakespeare --out ft/
    gptqwen finetune -c finetune-gpt1 task.task=entailment task.data=train.jsonl model.base=gpt1-tiny --print-config
    gptqwen finetune ... --out ft/ --resume                 # continue an interrupted run exactly

Rows: classification {"text", "label"}; entailment {"premise", "hypothesis", "label"};
similarity {"text_a", "text_b", "label"}; multiple-choice {"context", "choices": [...], "label": index}.
Every flag sets a recipe key (shown in brackets in --help); `--print-config` shows the resolved recipe.
"""

from __future__ import annotations

import argparse

from gptqwen.commands.recipe_args import add_recipe_arguments, resolve_recipe
from gptqwen.utils import print_json

FLAGS = ("--task", "--data", "--eval", "--from", "--tokenizer", "--from-scratch", "--labels", "--epochs", "--max-steps",
         "--batch-size", "--lr", "--min-lr", "--warmup", "--schedule", "--weight-decay", "--grad-clip", "--lm-coef",
         "--dropout", "--max-len", "--too-long", "--seed", "--device", "--threads")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p, "finetune", out_default="finetuned", shorthands=FLAGS, doc=__doc__)


def run(args: argparse.Namespace) -> int:
    recipe = resolve_recipe(args, "finetune")
    if recipe is None:  # --list or --print-config did the work
        return 0
    from gptqwen.finetune.transfer import finetune_task  # not needed (nor imported) for --print-config

    summary = finetune_task(recipe, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet or args.json,
                            stop_at=args.stop_at)  # fmt: skip
    if args.json:
        print_json(summary)
    elif "out" not in summary:
        print(f"stopped at step {summary['step']} of {summary['steps']}; finish with --resume --out {args.out}")
    else:
        acc = summary.get("eval_accuracy")
        print(f"fine-tuned {summary['task']} on {summary['train_examples']} examples ({summary['steps']} steps, "
              f"final loss {summary['final_loss']:.4f})" + (f"; dev accuracy {acc:.4f}" if acc is not None else ""))
        print(f"saved to {summary['out']} (metrics in {summary['run_dir']}/metrics.jsonl)")
    return 0
