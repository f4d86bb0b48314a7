"""GPT-3 style figure: a task's score against the number of in-context examples, one line per model.

    gptqwen eval --model small/ --model big/ --task copy --shots 0 1 2 4 8 --plot shots.png

One panel per task (its first metric, e.g. `acc`), x axis the shot count on a symmetric-log scale
(0, 1, 2, 4, ... as in the GPT-3 paper's figures), error bars of one standard error. Needs the `plot`
extra (matplotlib).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from gptqwen.errors import UserError, require
from gptqwen.utils import save_figure


def model_label(model: str) -> str:
    """A short name for tables and legends: `run/ckpt_0000300`, `model.gguf`, `run`."""
    p = Path(model)
    return f"{p.parent.name}/{p.name}" if p.name.startswith("ckpt_") else (p.name or model)


def plot_shot_curves(results: list[dict], out: str | Path, metric: str | None = None) -> Path:
    """Draw `results` (dicts from `EvalResult.to_dict()`) to a PNG at `out`."""
    require("matplotlib", "plot", "the accuracy-vs-shots plot")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    # task -> model -> [(shots, value, stderr)]
    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    names: dict[str, str] = {}
    for r in results:
        name = metric or next(iter(r["metrics"]))
        if name not in r["metrics"]:
            raise UserError(f"metric '{name}' is not among the results of task '{r['task']}' ({', '.join(r['metrics'])})")
        m = r["metrics"][name]
        curves[r["task"]][r["model"]].append((r["shots"], m["value"], m["stderr"]))
        names[r["task"]] = name
    if not curves:
        raise UserError("there are no results to plot")

    n = len(curves)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    for ax, (task, per_model) in zip(axes.flat, curves.items()):
        for model, points in per_model.items():
            points.sort()
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            errs = [0.0 if math.isnan(p[2]) else p[2] for p in points]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=model_label(model))
        ax.set_xscale("symlog", linthresh=1)
        shots = sorted({p[0] for pts in per_model.values() for p in pts})
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.set_xlabel("number of examples in context (K)")
        ax.set_ylabel(names[task])
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    out = save_figure(fig, out, dpi=120)
    plt.close(fig)
    return out
