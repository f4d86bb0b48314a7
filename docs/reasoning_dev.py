"""Thinking-mode accuracy of the reasoning demo's models on a dev set: problems disjoint from the demo's held-out
(test) problems, from every stage's training problems and from every distillation prompt. Session 14 chose the pruned
student's distillation recipe on this set, not on the test problems.

    OMP_NUM_THREADS=2 OUT=runs/demo-reasoning python docs/reasoning_dev.py OUT/distill-pruned/1-off-policy ...
"""

from __future__ import annotations

import os
import sys

from gptqwen.align.post import heldout_set, stage_problems
from gptqwen.finetune.evaluate import heldout_problems, reasoning_accuracy
from gptqwen.finetune.synthetic import problems
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.train.recipe import load_recipe

DEV_SEED = 4242


def dev_set(out: str, n: int) -> list:
    post = load_recipe(f"{out}/post.yaml", trainer="post")
    seen = {q.question for i in range(len(post.stages)) for q in stage_problems(post.stage(i).post)}
    for name in ("distill", "distill-pruned"):  # every distillation prompt, of every phase
        recipe = load_recipe(f"{out}/{name}.yaml", trainer="distill")
        for i in range(len(recipe.stages)):
            d = recipe.stage(i).distill
            seen |= {p.question for p in problems(max(d.synthetic, 3000), d.synthetic_seed, tuple(d.synthetic_kinds))}
    seen |= {p.question for p in heldout_set(post, 400)}  # the test problems (the demo takes at most 400 of these)
    return heldout_problems(n, DEV_SEED, seen, tuple(post.post.kinds))


def main(folders: list[str]) -> None:
    items = dev_set(os.environ.get("OUT", "runs/demo-reasoning"), int(os.environ.get("DEV_N", 300)))
    arithmetic = sum(p.kind == "arithmetic" for p in items)
    for folder in folders:
        model, tok = load_model_and_tokenizer(folder)
        res = reasoning_accuracy(model, tok, items, True, 128)
        right = sum(c for c, p in zip(res["correct"], items) if p.kind == "arithmetic")
        print(f"{folder}: dev thinking {res['accuracy']:.3f} (n = {len(items)}; arithmetic {right}/{arithmetic}, logic "
              f"{sum(res['correct']) - right}/{len(items) - arithmetic})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
