"""`gptqwen pretrain`: train a model from a recipe (default: a tiny Qwen3 on Shakespeare, in minutes on a CPU).

    gptqwen pretrain                                      # the default recipe, into runs/qwen3-shakespeare
    gptqwen pretrain --config gpt2-shakespeare train.max_steps=300 train.lr=2e-3
    gptqwen pretrain --preset gpt2-tiny model.n_layer=2   # a preset with the default data and schedule,
                                                          # into runs/<model name> = runs/gpt2-tiny+n_layer=2
    gptqwen pretrain --config my.yaml --resume            # continue the run in --out bit-identically
    gptqwen pretrain -c qwen3-3stage --print-config       # the resolved recipe, as YAML
    torchrun --nproc-per-node 2 -m gptqwen pretrain train.dist=fsdp
    torchrun --nproc-per-node 2 -m gptqwen pretrain train.dist=fsdp train.ckpt_format=sharded   # DCP, no gather

Overrides are `section.key=value` (sections: model, data, train); `gptqwen pretrain --list` shows
the built-in recipes.
"""

from __future__ import annotations

import argparse
import os

from gptqwen.commands.recipe_args import add_recipe_arguments, resolve_recipe
from gptqwen.utils import print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, "pretrain", out_default=None, doc=__doc__)
    parser.add_argument("--preset", help="model preset to train instead of the recipe's model (e.g. gpt2-tiny); the run and "
                        "the model are named after it and its model.* overrides (default --out runs/gpt2-tiny+n_layer=2)")
    parser.add_argument("--stage", help="run only this stage of a staged recipe (it starts from the previous stage's weights)")


def run(args: argparse.Namespace) -> int:
    recipe = resolve_recipe(args, "pretrain", preset=args.preset)
    if recipe is None:
        return 0
    from gptqwen.train.trainer import run_recipe

    out = args.out  # resolve_recipe set and checked it (default: runs/<recipe name>)
    results = run_recipe(recipe, out, resume=args.resume, overwrite=args.overwrite, stage=args.stage,
                         quiet=args.quiet or args.json, stop_at=args.stop_at)  # fmt: skip
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun only rank 0 reports
        return 0
    if args.json:
        print_json(results)
    elif results:
        last = results[-1]
        val = f", val loss {last['val_loss']:.3f}" if "val_loss" in last else ""
        print(f"done: {out} (step {last['step']}, loss {last.get('loss', float('nan')):.3f}{val}); "
              f"metrics in {last['run_dir']}/metrics.jsonl, curve in {last['run_dir']}/loss.png")
    return 0
