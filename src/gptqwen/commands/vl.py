"""`gptqwen vl`: vision-language models — train on synthetic images, grade held-out questions, count parameters.

    gptqwen vl train -c qwen-vl-tiny [section.key=value ...] [--out DIR]   # the recipe's stages in order
    gptqwen vl train -c qwen-vl-tiny vl.text_only=true --out runs/vl-text                  # text-only baseline
    gptqwen vl eval --model runs/qwen-vl-tiny/all [--items 200] [--examples docs/vision-examples.png] [--json]
    gptqwen vl params [qwen2.5-vl-7b ...] [--json]

Talk to a trained model with `gptqwen chat --model runs/qwen-vl-tiny/all --image picture.png`.
"""

from __future__ import annotations

import argparse

from gptqwen.commands.recipe_args import add_recipe_arguments, resolve_recipe
from gptqwen.utils import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    sub = p.add_subparsers(dest="action", required=True, metavar="{train,eval,params}")
    t = sub.add_parser("train", help="train a VLM (or its text-only baseline) on a vl recipe")
    add_recipe_arguments(t, "vl", out_default=None)
    e = sub.add_parser("eval", help="grade a trained model on held-out synthetic questions")
    e.add_argument("--model", required=True, help="a VLM folder (vl train output) or, for the baseline, a text model folder")
    e.add_argument("--tasks", default=None, help="comma-separated tasks (default: colour,shape,count,position,chart,word; also line, page)")
    e.add_argument("--items", type=int, default=200, help="held-out items per task")
    e.add_argument("--train-items", type=int, default=2000, help="training items per task (excluded from the test set)")
    e.add_argument("--seed", type=int, default=0, help="data seed the model was trained with")
    e.add_argument("--examples", metavar="PNG", help="also draw a few test images with the model's answers into PNG")
    e.add_argument("--json", action="store_true", help="print the results as JSON")
    pp = sub.add_parser("params", help="parameter counts of the VLM presets")
    pp.add_argument("presets", nargs="*", help="VLM presets (default: all)")
    pp.add_argument("--json", action="store_true", help="print the counts as JSON")


def run(args: argparse.Namespace) -> int:
    if args.action == "params":
        return _params(args)
    if args.action == "eval":
        return _eval(args)
    recipe = resolve_recipe(args, "vl")
    if recipe is None:
        return 0
    from gptqwen.finetune.vl import run_vl

    summary = run_vl(recipe, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet or args.json,
                     stop_at=args.stop_at)  # fmt: skip
    if args.json:
        print_json(summary)
    elif "out" not in summary:
        print(f"stopped at step {summary['step']}; finish with --resume --out {args.out}")
    else:
        print(f"trained {summary['steps']} steps on {summary['train_items']} items; final loss {summary['final_loss']:.4f}")
        _print_heldout(summary.get("heldout"))
        print(f"saved to {summary['out']}")
    return 0


def _print_heldout(heldout: dict | None) -> None:
    for task, r in (heldout or {}).get("tasks", {}).items():
        errors = f"  word error rate {r['wer']:.3f}, character error rate {r['cer']:.3f}" if "cer" in r else ""
        print(f"  {task:<9} {100 * r['accuracy']:5.1f}% ± {100 * r['stderr']:.1f}  (n={r['n']}){errors}")


def _params(args: argparse.Namespace) -> int:
    from gptqwen.vision.config import VLM_PRESETS, vlm_num_params

    counts = {name: vlm_num_params(name) for name in args.presets or VLM_PRESETS}
    if args.json:
        print_json(counts)
        return 0
    print(f"{'preset':<24} {'vision':>14} {'projector':>12} {'decoder':>15} {'total':>15}")
    for name, c in counts.items():
        print(f"{name:<24} {c['vision']:>14,} {c['projector']:>12,} {c['decoder']:>15,} {c['total']:>15,}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from types import SimpleNamespace

    from gptqwen.errors import UserError
    from gptqwen.finetune.vl import evaluate, heldout_items
    from gptqwen.loading import load_model_and_tokenizer
    from gptqwen.vision import VisionLanguageModel, is_vlm_dir
    from gptqwen.vision.data import DEFAULT_TASKS, check_tasks

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else list(DEFAULT_TASKS)
    check_tasks(tasks)  # before the model loads
    decoder, tok = load_model_and_tokenizer(args.model)
    if tok is None:
        raise UserError(f"'{args.model}' has no tokenizer")
    model = VisionLanguageModel.attach(decoder, args.model) if is_vlm_dir(args.model) else decoder
    v = SimpleNamespace(tasks=tasks, eval_items=args.items, train_items=args.train_items, data_seed=args.seed)
    items = heldout_items(v)
    result = evaluate(model, tok, items)
    if args.examples:
        from gptqwen.finetune.vl import answer_items, correct
        from gptqwen.vision.sheet import example_sheet

        picked = [items[i] for i in range(min(len(items), 2 * len(tasks)))]
        answers = answer_items(model, tok, picked)
        example_sheet(picked, answers, [correct(it.task, a, it.answer) for it, a in zip(picked, answers)], args.examples)
        result["examples_png"] = args.examples
    if args.json:
        print_json(result)
        return 0
    print(f"{args.model}: held-out accuracy ({'text only' if model is decoder else 'with images'})")
    _print_heldout(result)
    return 0
