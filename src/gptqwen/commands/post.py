"""`gptqwen post`: Qwen3's four post-training stages in one recipe (`gptqwen.align.post`).

    gptqwen post -c qwen3-post --from qwen3-tiny --tokenizer tok/ --out post/
    gptqwen post -c qwen3-post --from runs/base post.eval_problems=400 --print-config
    gptqwen post --out post/ --resume                         # skips finished stages, continues the current one

Stages (each from the previous one's weights, each in `OUT/<n>-<name>/`, `OUT/stages.json` records the finished
ones with their held-out accuracy in thinking and non-thinking mode): 1 cold start (SFT on verified step-by-step
solutions in <think>), 2 reasoning RL (GRPO on problems filtered by pass rate), 3 thinking-mode fusion (SFT on
thinking and non-thinking data), 4 general RL (GRPO with format and instruction-following rewards). Override a
stage's settings in a recipe file of your own, or for every stage with `section.key=value`.
"""

from __future__ import annotations

import argparse

from gptqwen.commands.recipe_args import add_recipe_arguments, resolve_recipe

SHORT = ("--from", "--tokenizer", "--seed", "--device", "--threads")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p, "post", out_default="post", shorthands=SHORT, doc=__doc__)


def run(args: argparse.Namespace) -> int:
    recipe = resolve_recipe(args, "post")
    if recipe is None:
        return 0
    from gptqwen.align.post import run_post
    from gptqwen.commands.distill import print_stages

    summary = run_post(recipe, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet or args.json,
                       stop_at=args.stop_at)  # fmt: skip
    return print_stages(args, summary)
