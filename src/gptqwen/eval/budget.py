"""Accuracy against the thinking budget (the Qwen3 report's figure, section 4.3), thinking off as its own point.

    gptqwen eval --model runs/post --task reasoning --thinking-budget 0 16 32 64 128 256 none --limit 200 \
        --plot budget.png --json
    gptqwen eval --model runs/post --task my_generate_task.yaml --thinking-budget 0 8 32 none

Budgets: a whole number N >= 1 caps the reasoning at N model-written tokens (the engine then feeds the
stop-thinking text, `infer/thinking.py`, and the model answers); `none` (or `unlimited`) sets no cap, the
reasoning ends when the model closes its block or `--max-new-tokens` runs out; `0` is non-thinking mode (zero
thinking tokens: the Qwen3 template's hard switch, an empty think block in the prompt). The engine itself never
sees a budget of 0 (it takes N >= 1 only), so there is one meaning of a budget everywhere; a negative budget is an
error. Non-thinking mode is always measured, as its own point, whether `0` is listed or not.

Tasks: `reasoning` (held-out built-in problems, `finetune.synthetic`: multi-step arithmetic and true/false chains,
graded by the final "The answer is X") and any generate-until task file. A task's prompt (few-shot examples
included) becomes the user message of a chat turn; the answer is the turn's content after the think block, cut at
the task's `until` strings, graded by exact match (of the X in "The answer is X" when the content has one).
Every point reports accuracy with its standard error, the share of answers where the budget was hit and the mean
thinking tokens. Decoding is greedy, many turns run as one batch through `Engine.run`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

from gptqwen.errors import UserError, require
from gptqwen.eval import scorers
from gptqwen.eval.harness import fewshot_prefix
from gptqwen.eval.lm import ScoringModel
from gptqwen.eval.plot import model_label
from gptqwen.eval.report import write_outputs
from gptqwen.eval.taskspec import load_task
from gptqwen.finetune.evaluate import heldout_problems
from gptqwen.finetune.synthetic import GENERATORS, Problem, extract_answer
from gptqwen.infer import Engine, SamplingParams
from gptqwen.infer.thinking import chat_many
from gptqwen.utils import print_json, save_figure

UNLIMITED = ("none", "unlimited", "inf")
REASONING_TASK = "reasoning"


@dataclass(frozen=True)
class Item:
    """One question: the user message and a grader of the answer's content (1.0 right, 0.0 wrong)."""

    question: str
    grade: Callable[[str], float]


def parse_budgets(values: list[str]) -> list[int | None]:
    """`["0", "16", "none"]` -> `[0, 16, None]` (sorted, unique; None = no cap last). Negative or non-numbers: error."""
    out: set[int] = set()
    unlimited = False
    for v in values:
        text = str(v).strip().lower()
        if text in UNLIMITED:
            unlimited = True
            continue
        try:
            n = int(text)
        except ValueError:
            raise UserError(f"--thinking-budget takes whole numbers of tokens or 'none', not '{v}'") from None
        if n < 0:
            raise UserError(f"--thinking-budget {n} is negative; give N >= 1 tokens, 0 for non-thinking mode, "
                            "or 'none' for no cap")  # fmt: skip
        out.add(n)
    if not out and not unlimited:
        raise UserError("--thinking-budget needs at least one value, e.g. 0 16 64 none")
    return sorted(out) + ([None] if unlimited else [])


def problem_items(problems: list[Problem]) -> list[Item]:
    """Built-in problems as items, graded by the X of the final "The answer is X"."""
    return [Item(p.question, lambda text, a=p.answer: float(extract_answer(text) == a.lower())) for p in problems]


def reasoning_items(n: int, seed: int = 4321, kinds: tuple[str, ...] = ("arithmetic", "logic")) -> list[Item]:
    """`n` built-in reasoning problems (seeded apart from the training data's default seeds)."""
    unknown = [k for k in kinds if k not in GENERATORS]
    if unknown:
        raise UserError(f"unknown reasoning kinds {unknown}; choose from {', '.join(GENERATORS)}")
    return problem_items(heldout_problems(n, seed, set(), kinds))


def task_items(spec: str, shots: int = 0, limit: int | None = None, seed: int = 1234) -> list[Item]:
    """A generate-until task's test records as chat questions, graded by exact match of the answer."""
    task = load_task(spec)
    if task.output_type != "generate_until":
        raise UserError(f"task '{task.name}' is {task.output_type}; the thinking-budget eval takes generate_until "
                        f"tasks or '{REASONING_TASK}'")  # fmt: skip
    items = []
    for i in range(len(task.test_docs))[:limit]:
        refs = task.targets(task.test_docs[i])
        items.append(Item(fewshot_prefix(task, i, shots, seed) + task.text(task.test_docs[i]),
                          lambda text, r=refs, until=tuple(task.until): _match(text, r, until)))
    return items


def _match(content: str, refs: list[str], until: tuple[str, ...]) -> float:
    for stop in until:
        if stop and stop in content:
            content = content[:content.index(stop)]
    answer = extract_answer(content) or content
    return scorers.generation_scores(answer, refs)["exact_match"]


def budget_point(engine: Engine, items: list[Item], budget: int | None, thinking: bool, max_new_tokens: int,
                 batch_size: int = 32) -> dict:  # fmt: skip
    """Greedy accuracy (± stderr) of `items` at one budget, the share of turns that hit it, mean thinking tokens."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    turns = chat_many(engine, [[{"role": "user", "content": it.question}] for it in items], thinking, batch_size,
                      thinking_budget=budget if thinking else None, params=params)  # fmt: skip
    scores = [it.grade(r.content) for it, r in zip(items, turns)]
    samples = [{"question": it.question, "reasoning": r.reasoning_content, "content": r.content}
               for it, r in zip(items[:3], turns)]  # fmt: skip
    n = len(scores)
    return {"mode": "thinking" if thinking else "non_thinking", "budget": budget if thinking else 0, "n": n,
            "accuracy": scorers.mean(scores), "stderr": scorers.mean_stderr(scores),
            "budget_hit": scorers.mean([float(r.budget_hit) for r in turns]),
            "thinking_tokens": scorers.mean([r.thinking_tokens for r in turns]), "samples": samples}


def budget_curve(model, tokenizer, items: list[Item], budgets: list[int | None], max_new_tokens: int | None = None,
                 batch_size: int = 32) -> list[dict]:  # fmt: skip
    """Non-thinking mode, then thinking mode at every positive budget of `budgets` (None = no cap)."""
    if not items:
        raise UserError("no items to evaluate; check --limit and the task")
    if tokenizer is None or tokenizer.token_to_id("<think>") is None:
        raise UserError("the thinking-budget eval needs a chat model whose tokenizer has <think> and </think>")
    finite = [b for b in budgets if b]
    # room for the reasoning at the largest budget plus an answer; "none" gets the same room
    max_new = max_new_tokens or (max(finite, default=128) + 64)
    if finite and max_new <= max(finite):
        raise UserError(f"--max-new-tokens {max_new} leaves no room for an answer after {max(finite)} thinking tokens")
    engine = Engine(model.eval(), tokenizer)
    points = [budget_point(engine, items, None, False, max_new, batch_size)]
    points += [budget_point(engine, items, b, True, max_new, batch_size) for b in budgets if b != 0]
    return points


def plot_budget_curves(rows: list[dict], out: str) -> None:
    """Accuracy vs thinking budget (log scale, 'none' at the right), one line per (model, task); thinking off
    is the dashed line of the same colour."""
    require("matplotlib", "plot", "the thinking-budget plot")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    finite = sorted({r["budget"] for r in rows if r["mode"] == "thinking" and r["budget"]})
    right = 2 * finite[-1] if finite else 1  # where "none" is drawn
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in dict.fromkeys((r["model"], r["task"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["task"]) == key]
        curve = sorted(((r["budget"] or right), r["accuracy"], _err(r["stderr"])) for r in mine if r["mode"] == "thinking")
        line = ax.errorbar([c[0] for c in curve], [c[1] for c in curve], yerr=[c[2] for c in curve], marker="o",
                           capsize=3, label=f"{model_label(key[0])} {key[1]}: thinking")  # fmt: skip
        off = next(r for r in mine if r["mode"] == "non_thinking")
        ax.axhline(off["accuracy"], ls="--", color=line[0].get_color(), label=f"{model_label(key[0])} {key[1]}: no thinking")
    ticks = finite + ([right] if any(r["budget"] is None for r in rows) else [])
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) if t != right or right in finite else "none" for t in ticks])
    ax.set_xlabel("thinking budget (tokens)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, out, dpi=120)
    plt.close(fig)


def _err(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def add_budget_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("thinking budget (gptqwen.eval.budget; --task reasoning or generate_until tasks)")
    g.add_argument("--thinking-budget", nargs="+", default=None, metavar="N",
                   help="accuracy per thinking budget: N >= 1 tokens, 0 = non-thinking mode, none = no cap")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens per turn, reasoning included (default: the largest budget + 64)")
    g.add_argument("--reasoning-kinds", default="arithmetic,logic", help="built-in problem kinds of --task reasoning")


def run_budget(args: argparse.Namespace) -> int:
    """`gptqwen eval --thinking-budget ...`: the table (or --json), --output, --samples and --plot."""
    budgets = parse_budgets(args.thinking_budget)
    if not args.model or not args.task:
        raise UserError(f"the thinking-budget eval needs --model and --task ({REASONING_TASK} or a generate_until task)")
    if args.perplexity:
        raise UserError("run --perplexity without --thinking-budget")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UserError(f"--plot writes a PNG; give a file name ending in .png, not '{args.plot}'")
    shots = (args.shots or [0])[0]
    kinds = tuple(k.strip() for k in args.reasoning_kinds.split(",") if k.strip())
    tasks = {t: reasoning_items(args.limit or 200, kinds=kinds) if t == REASONING_TASK
             else task_items(t, shots, args.limit, args.seed) for t in dict.fromkeys(args.task)}  # fmt: skip
    rows = []
    for spec in args.model:
        lm = ScoringModel.load(spec, device=args.device, dtype=args.dtype, adapter=args.adapter,
                               random_weights=args.random_weights, progress=False)
        for task, items in tasks.items():
            points = budget_curve(lm.model, lm.tokenizer, items, budgets, args.max_new_tokens, args.batch_size)
            rows += [{"model": spec, "task": task, **p} for p in points]
    doc = {"results": [{k: v for k, v in r.items() if k != "samples"} for r in rows],
           "config": {"budgets": budgets, "limit": args.limit, "max_new_tokens": args.max_new_tokens}}
    samples = ({"model": r["model"], "task": r["task"], "budget": r["budget"], **s} for r in rows for s in r["samples"])
    write_outputs(doc, output=args.output, samples_path=args.samples, samples=samples, plot_path=args.plot,
                  plot=lambda path: plot_budget_curves(rows, path))
    if args.json:
        print_json(doc)
        return 0
    for r in rows:
        budget = "off" if r["mode"] == "non_thinking" else ("none" if r["budget"] is None else r["budget"])
        print(f"{model_label(r['model'])}  {r['task']}  budget {budget!s:>5}  accuracy {r['accuracy']:.3f} ± "
              f"{r['stderr']:.3f}  budget hit {r['budget_hit']:.2f}  thinking tokens {r['thinking_tokens']:.1f}  n={r['n']}")
    return 0
