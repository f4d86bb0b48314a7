"""`gptqwen pretrain`: train a model from a recipe (default: a tiny Qwen3 on Shakespeare, in minutes on a CPU).

    gptqwen pretrain                                      # the default recipe, into runs/qwen3-shakespeare
    gptqwen pretrain --config gpt2-shakespeare train.max_steps=300 train.lr=2e-3
    gptqwen pretrain --preset qwen3-tiny --out runs/x     # a preset with the default data and schedule
    gptqwen pretrain --config my.yaml --resume            # continue the run in --out bit-identically
    torchrun --nproc-per-node 2 -m gptqwen pretrain train.dist=fsdp
    torchrun --nproc-per-node 2 -m gptqwen pretrain train.dist=fsdp train.ckpt_format=sharded   # DCP, no gather

Overrides are `section.key=value` (sections: model, data, train); `gptqwen pretrain --list` shows
the built-in recipes.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. train.lr=1e-3 model.n_layer=6")
    parser.add_argument("--config", "-c", help="built-in recipe name or YAML file (default: qwen3-shakespeare)")
    parser.add_argument("--preset", help="model preset to train instead of the recipe's model (e.g. gpt2-tiny)")
    parser.add_argument("--out", help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true", help="delete the checkpoints in --out and start over")
    parser.add_argument("--stage", help="run only this stage of a staged recipe (it starts from the previous stage's weights)")
    parser.add_argument("--stop-at", type=int, metavar="STEP", help="save a checkpoint and stop at this step (finish later with --resume)")
    parser.add_argument("--list", action="store_true", help="list the built-in recipes and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, log lines or samples (metrics still go to metrics.jsonl)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end (implies --quiet)")
    # overrides may come before and after options (`--out x train.lr=1e-3 --resume`)
    parser.parse_args = parser.parse_intermixed_args  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    import os

    from gptqwen.errors import UserError
    from gptqwen.train.config import load_recipe, recipe_names

    if args.list:
        import importlib.resources

        import yaml

        for name in recipe_names():
            raw = yaml.safe_load((importlib.resources.files("gptqwen") / "recipes" / f"{name}.yaml").read_text())
            print(f"{name:<24} {raw.get('description', '')}")
        return 0
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; choose one")
    recipe = load_recipe(args.config, args.overrides, preset=args.preset)
    from gptqwen.train.trainer import run_recipe

    out = args.out or f"runs/{recipe.name}"
    results = run_recipe(recipe, out, resume=args.resume, overwrite=args.overwrite, stage=args.stage,
                          quiet=args.quiet or args.json, stop_at=args.stop_at)
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun only rank 0 reports
        return 0
    if args.json:
        from gptqwen.utils import print_json

        print_json(results)
    elif results:
        last = results[-1]
        val = f", val loss {last['val_loss']:.3f}" if "val_loss" in last else ""
        print(f"done: {out} (step {last['step']}, loss {last.get('loss', float('nan')):.3f}{val}); "
              f"metrics in {last['run_dir']}/metrics.jsonl, curve in {last['run_dir']}/loss.png")
    return 0
