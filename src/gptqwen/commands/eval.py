"""`gptqwen eval`: few-shot evaluation (GPT-3 protocol), perplexity, and accuracy-vs-shots plots.

    gptqwen eval --list-tasks
    gptqwen eval --model runs/qwen3-shakespeare --task copy --shots 0 1 4 --limit 200
    gptqwen eval --model small/ --model big/ --task my_task.yaml --shots 0 1 8 --plot shots.png --json
    gptqwen eval --model runs/qwen3-shakespeare --task shakespeare            # held-out perplexity
    gptqwen eval --model model.gguf --perplexity notes.txt              # any text file
    gptqwen eval --model runs/qwen3-shakespeare --task my_task.yaml --backend lm-eval   # same task through lm-eval
    gptqwen eval --model smollm2.gguf --task passkey --context-lengths 2048 4096 8192 --trials 5 --plot pk.png
    gptqwen eval --model smollm2.gguf --task passkey --context-lengths 16384 --yarn 2 --dca 6144 2048
    gptqwen eval --model runs/long --task ppl-position --context-lengths 4096 --document book.txt --plot ppl.png
    gptqwen eval --model runs/post --task reasoning --thinking-budget 0 16 64 256 none --limit 200 --plot budget.png

Every (model, task, shot count) is one row of the results table; `--json` prints them as one JSON
document. For lm-evaluation-harness's own command line with this project's models, see
`python -m gptqwen.eval.lm_eval_adapter --help`.
"""

from __future__ import annotations

import argparse
import sys

from gptqwen.commands.engine_options import add_extension_arguments, extend_as_asked
from gptqwen.errors import UserError
from gptqwen.eval.budget import add_budget_arguments, run_budget
from gptqwen.eval.harness import evaluate
from gptqwen.eval.lm import ScoringModel
from gptqwen.eval.lm_eval_adapter import evaluate_with_lm_eval
from gptqwen.eval.long_context import (
    LONG_TASKS,
    LongContextEval,
    LongContextSettings,
    plot_passkey_heatmap,
    plot_ppl_by_position,
)
from gptqwen.eval.perplexity import file_task
from gptqwen.eval.plot import model_label, plot_shot_curves
from gptqwen.eval.report import write_outputs
from gptqwen.eval.taskspec import BUILTIN_DIR, builtin_task_names, load_task
from gptqwen.utils import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("--model", action="extend", nargs="+", default=[], metavar="PATH_OR_PRESET",
                   help="run dir, checkpoint dir, HF dir, Hub id (org/name) or .gguf file (repeat for several models)")
    p.add_argument("--random-weights", action="store_true",
                   help="allow preset names as --model: their architecture with random, untrained weights (a floor)")
    p.add_argument("--task", action="extend", nargs="+", default=[], metavar="TASK",
                   help="built-in task name or task .yaml file (repeatable)")
    p.add_argument("--shots", action="extend", nargs="+", type=int, default=None, metavar="K",
                   help="few-shot example counts, e.g. --shots 0 1 8 (default 0)")
    p.add_argument("--perplexity", action="append", default=[], metavar="FILE",
                   help="also measure perplexity and bits per byte on a UTF-8 text file (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test records of each task")
    p.add_argument("--seed", type=int, default=1234, help="seed for drawing few-shot examples (default 1234)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--stride", type=int, default=None,
                   help="perplexity window advance in tokens (default: the model's context, i.e. disjoint windows)")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="a PEFT LoRA adapter folder merged into each --model when loading")
    p.add_argument("--device", default=None, help="torch device (default: cpu, or what the checkpoint loader picks)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--backend", default="gptqwen", choices=["gptqwen", "lm-eval"],
                   help="run the tasks with this harness or through lm-evaluation-harness and the gptqwen adapter")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="draw accuracy vs shots (one line per model)")
    p.add_argument("--output", default=None, metavar="FILE.json", help="also write the results JSON to this file")
    p.add_argument("--samples", default=None, metavar="FILE.jsonl", help="write every prompt, answer and score")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--list-tasks", action="store_true", help="list the built-in tasks and exit")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_long_context_arguments(p)
    add_budget_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.list_tasks:
        return _list_tasks(args.json)
    if not args.model:
        raise UserError("give at least one --model (a run dir, checkpoint dir, HF dir or .gguf file)")
    if any(t in LONG_TASKS for t in args.task):
        return _long_context(args)
    if args.thinking_budget is not None:
        return run_budget(args)
    if not args.task and not args.perplexity:
        raise UserError("give at least one --task (see --list-tasks) or --perplexity FILE")
    shots = sorted(set(args.shots if args.shots is not None else [0]))
    if any(k < 0 for k in shots):
        raise UserError(f"--shots must be >= 0, got {min(shots)}")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UserError(f"--plot writes a PNG; give a file name ending in .png, not '{args.plot}'")
    loaded = [load_task(t) for t in args.task] + [file_task(f) for f in args.perplexity]
    progress = sys.stderr.isatty() and not args.no_progress

    results = []
    for spec in args.model:
        results += _evaluate_model(spec, loaded, shots, args, progress)

    doc = {"results": [r.to_dict() for r in results],
           "config": {"shots": shots, "limit": args.limit, "seed": args.seed, "backend": args.backend}}
    samples = ({"model": r.model, "task": r.task, "shots": r.shots, **s} for r in results for s in r.samples)
    write_outputs(doc, output=args.output, samples_path=args.samples, samples=samples, plot_path=args.plot,
                  plot=lambda path: plot_shot_curves(doc["results"], path))
    if args.json:
        print_json(doc)
    else:
        _print_table(results)
    return 0


def _evaluate_model(spec: str, loaded, shots: list[int], args, progress: bool):
    lm = ScoringModel.load(spec, device=args.device, dtype=args.dtype, adapter=args.adapter,
                           random_weights=args.random_weights, batch_size=args.batch_size, progress=progress)
    out = []
    for task in loaded:
        # perplexity takes no examples: measure it once, whatever the shot counts
        for k in ([0] if task.output_type == "perplexity" else shots):
            if args.backend == "lm-eval":
                out.append(evaluate_with_lm_eval(lm, task, shots=k, limit=args.limit, seed=args.seed))
            else:
                out.append(evaluate(lm, task, shots=k, limit=args.limit, seed=args.seed, stride=args.stride))
    return out


def _print_table(results) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="gptqwen eval")
    for col in ("model", "task", "shots", "n", "metric", "value", "± stderr"):
        table.add_column(col, justify="right" if col in ("shots", "n", "value", "± stderr") else "left",
                         overflow="fold", no_wrap=col != "model")
    for r in results:
        for i, (name, m) in enumerate(r.metrics.items()):
            head = (model_label(r.model), r.task, str(r.shots), str(r.n)) if i == 0 else ("",) * 4
            table.add_row(*head, name, _number(m["value"]), _number(m["stderr"]))
    console = Console()
    if not console.is_terminal:  # piped output: do not wrap cells at rich's 80-column default
        console = Console(width=200)
    console.print(table)


def _number(x: float) -> str:
    return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.4g}"


def _list_tasks(as_json: bool) -> int:
    rows = []
    for name in builtin_task_names():
        text = (BUILTIN_DIR / f"{name}.yaml").read_text(encoding="utf-8")
        first = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
        rows.append({"task": name, "about": first})
    if as_json:
        print_json(rows)
    else:
        width = max(len(r["task"]) for r in rows)
        for r in rows:
            print(f"{r['task']:<{width}}  {r['about']}")
    return 0


def _add_long_context_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("long context (--task passkey | needle | ppl-position; gptqwen.eval.long_context)")
    g.add_argument("--context-lengths", nargs="+", type=int, default=None, metavar="N",
                   help="context lengths in tokens, e.g. 1024 2048 4096 (prompt + answer)")
    g.add_argument("--depths", nargs="+", type=float, default=None, metavar="D",
                   help="passkey depths in [0, 1] (default 0 0.25 0.5 0.75 1)")
    g.add_argument("--trials", type=int, default=5, help="prompts per cell; windows per length for ppl-position")
    g.add_argument("--keys", type=int, default=4, help="needles per prompt for --task needle (default 4)")
    add_extension_arguments(g)
    g.add_argument("--document", default=None, metavar="FILE",
                   help="text for ppl-position (default: the held-out Shakespeare blocks)")
    g.add_argument("--buckets", type=int, default=16, help="position buckets for ppl-position (default 16)")


def _long_context(args: argparse.Namespace) -> int:
    other = [t for t in args.task if t not in LONG_TASKS]
    if other or args.perplexity:
        raise UserError(f"run the long-context tasks ({', '.join(LONG_TASKS)}) without other tasks or --perplexity")
    if not args.model or not args.context_lengths:
        raise UserError("long-context tasks need --model and --context-lengths")
    settings = LongContextSettings(args.context_lengths, trials=args.trials, keys=args.keys, seed=args.seed,
                                   batch_size=args.batch_size, buckets=args.buckets, document=args.document,
                                   **({"depths": args.depths} if args.depths else {}))
    settings.validate()
    rows = []
    for spec in args.model:
        lm = ScoringModel.load(spec, device=args.device, dtype=args.dtype, random_weights=args.random_weights,
                               progress=False)
        extend_as_asked(lm.model, max(settings.context_lengths), args)
        ev = LongContextEval(lm.model, lm.tokenizer, settings,
                             progress=None if args.no_progress else lambda m: print(m, file=sys.stderr))
        for task in dict.fromkeys(args.task):
            got = {"passkey": ev.passkey, "needle": ev.needle, "ppl-position": ev.ppl_by_position}[task]()
            rows += [{"model": spec, "yarn": args.yarn, "dca": args.dca, **r} for r in got]
    doc = {"results": rows}
    passkey = [r for r in rows if r["task"] == "passkey"]
    write_outputs(doc, output=args.output, plot_path=args.plot,
                  plot=lambda path: plot_passkey_heatmap(passkey, path) if passkey
                  else plot_ppl_by_position([r for r in rows if r["task"] == "ppl-position"], path))
    if args.json:
        print_json(doc)
    else:
        for r in rows:
            where = f" depth {r['depth']:.2f}" if r.get("depth") is not None else ""
            score = (f"ppl {r['ppl']:.3f} over {r['windows']} window(s)" if r["task"] == "ppl-position"
                     else f"{r['correct']}/{r['trials']} = {r['accuracy']:.2f}")
            print(f"{model_label(r['model'])}  {r['task']}  L={r['context_length']}{where}  {score}")
    return 0
