"""`gptqwen grpo`: online group-relative policy optimisation with the project's engine and reward functions.

    gptqwen grpo --from sft/ --synthetic 2000 --rewards math --out grpo/ --max-steps 100
    gptqwen grpo --from sft/ --prompts problems.jsonl --rewards math,format --reward-weights 1,0.2 --json
    gptqwen grpo -c grpo-qwen3 model.base=sft/ grpo.prompts=code.jsonl grpo.rewards=[code] grpo.beta=0.04
    gptqwen grpo ... --out grpo/ --resume                   # continue an interrupted run exactly

Prompt rows: {"prompt": text or chat messages, "answer"?: for math, "tests"?: for code, ...}. Rewards:
math, math-verify (the same answer check by the optional math-verify package: pip install 'gptqwen[align]'),
steps, format, code, constraints, rbrm:RUBRIC.yaml (a judge model + rules), model:REWARD_DIR (`gptqwen reward train`).
"""

from __future__ import annotations

import argparse

from gptqwen.commands import align_flags
from gptqwen.commands.recipe_args import add_recipe_arguments, resolve_recipe

SHORT = ("--from", "--tokenizer", "--max-steps", "--lr", "--min-lr", "--warmup", "--schedule", "--weight-decay", "--grad-clip",
         "--seed", "--device", "--threads", "--lora-r", "--lora-alpha", "--lora-dropout", "--lora-targets")  # fmt: skip
FLAGS: align_flags.Table = {
    "--prompts": ("grpo.prompts", "prompt JSONL: {\"prompt\", \"answer\"?, \"tests\"?} rows"),
    "--synthetic": ("grpo.synthetic", "instead of --prompts: N built-in problems with answers"),
    "--synthetic-kinds": ("grpo.synthetic_kinds", "built-in problem kinds (comma-separated)"),
    "--rewards": ("grpo.rewards", "reward functions, comma-separated: math, math-verify, steps, format, code, rbrm:RUBRIC, model:DIR"),
    "--reward-weights": ("grpo.reward_weights", "weights of the reward functions (comma-separated)"),
    "--num-generations": ("grpo.num_generations", "G: completions per prompt"),
    "--prompts-per-step": ("grpo.prompts_per_step", "prompts per generation batch"),
    "--max-new-tokens": ("grpo.max_new_tokens", "completion length limit"),
    "--temperature": ("grpo.temperature", "sampling temperature"),
    "--loss-type": ("grpo.loss_type", "grpo, bnpo, dr_grpo or dapo"),
    "--beta": ("grpo.beta", "KL weight (k3 estimator); 0 = no reference"),
    "--num-iterations": ("grpo.num_iterations", "μ: optimizer steps per generation batch"),
    "--eval-problems": ("grpo.eval_problems", "--synthetic: grade N held-out problems before and after"),
    "--no-thinking": ("grpo.enable_thinking", "render prompts in non-thinking mode", "false"),
    "--query-selection": ("grpo.query_selection", "Qwen2.5: drop zero-variance groups, order by reward variance", "true"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p, "grpo", out_default="grpo", shorthands=SHORT, doc=__doc__)
    align_flags.add_flags(p, FLAGS, "prompts, rewards and sampling")


def run(args: argparse.Namespace) -> int:
    args.set[:0] = align_flags.overrides(args, FLAGS)
    recipe = resolve_recipe(args, "grpo")
    if recipe is None:
        return 0
    from gptqwen.align.grpo import run_grpo

    summary = run_grpo(recipe, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet or args.json,
                       stop_at=args.stop_at)  # fmt: skip
    return align_flags.report(args, summary, lambda s: [
        f"trained {s['steps']} steps on {s['prompts']} prompts; last batch reward {s['reward']:.3f}",
        *(f"held-out accuracy {key.split('_')[1]}: {s[key]['accuracy']:.3f} ± {s[key]['stderr']:.3f} (n={s[key]['n']})"
          for key in ("heldout_before", "heldout_after") if key in s)])
