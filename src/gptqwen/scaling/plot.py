"""Plots of a scaling-law fit: loss vs compute with the fitted frontier, IsoFLOP curves, the prediction.

Left panel: every run's loss against its compute, the law's frontier (chinchilla: the loss at the
compute-optimal N*(C), D*(C); gpt4: a·C^b + c; kaplan: the L(C) line), runs left out of the fit in grey,
the spread of repeated runs (seeds) as ±1 standard deviation bars, and the prediction with its bootstrap
interval beside the actual loss when one is given. Right panel (when runs share a compute budget): IsoFLOP
profiles, loss against N at fixed C, with the chinchilla fit's curve L(N, C/6N) through each. matplotlib
is an optional extra (`pip install matplotlib`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gptqwen.errors import UserError
from gptqwen.scaling.data import Runs
from gptqwen.scaling.fit import Fit
from gptqwen.scaling.laws import chinchilla_loss, compute_optimal, gpt4_loss, power_law
from gptqwen.utils import save_figure


def isoflop_groups(runs: Runs, tolerance_decades: float = 0.02) -> list[np.ndarray]:
    """Indices of runs sharing a compute budget (within `tolerance_decades` of log10 C), groups of ≥ 2 runs."""
    order = np.argsort(runs.flops)
    log_c = np.log10(runs.flops[order])
    breaks = np.flatnonzero(np.diff(log_c) > tolerance_decades) + 1
    return [g for g in np.split(order, breaks) if len(g) >= 2]


def _frontier(law: str, params: dict[str, float], c: np.ndarray) -> np.ndarray | None:
    if law == "chinchilla":
        return compute_optimal(c, **params)["loss"]
    if law == "gpt4":
        return gpt4_loss(c, **params)
    if "alpha_C" in params:
        return power_law(c, params["Cc"], params["alpha_C"])
    return None


def plot_fit(path: str | Path, runs: Runs, fit: Fit, prediction: dict[str, Any] | None = None,
             excluded: Runs | None = None) -> Path:
    """Write the figure to `path` (format from its suffix, e.g. .png) and return the path."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("--plot needs matplotlib, which is not installed; install it with: pip install matplotlib "
                        "(or pip install 'gptqwen[plot]')") from None
    groups = isoflop_groups(runs)
    fig = Figure(figsize=(12 if groups else 6.5, 4.8), layout="constrained")
    axes = fig.subplots(1, 2 if groups else 1, squeeze=False)[0]
    ax = axes[0]
    c_all = [runs.flops] + ([excluded.flops] if excluded is not None and len(excluded) else [])
    c_hi = max(float(np.max(np.concatenate(c_all))), (prediction or {}).get("target_compute") or 0.0)
    c = np.geomspace(float(runs.flops.min()) / 2, c_hi * 2, 200)
    points = ax.scatter(runs.flops, runs.loss, c=np.log10(runs.params), cmap="viridis", s=22, zorder=3)
    fig.colorbar(points, ax=ax, label="log10 N (parameters)")
    if excluded is not None and len(excluded):
        ax.scatter(excluded.flops, excluded.loss, marker="x", color="grey", label="left out of the fit", zorder=3)
    label = "seed spread (±1 std)"
    for r in (runs, excluded):
        if r is not None and r.loss_std is not None and len(r):
            ax.errorbar(r.flops, r.loss, yerr=r.loss_std, fmt="none", ecolor="grey", elinewidth=1, alpha=0.7,
                        zorder=2, label=label)
            label = None
    curve = _frontier(fit.law, fit.params, c)
    if curve is not None:
        ax.plot(c, curve, color="C1", label=f"{fit.law} fit")
    if fit.law == "gpt4" and fit.params["c"] > 0.01 * float(runs.loss.min()):  # c ~ 0 has no place on a log axis
        ax.axhline(fit.params["c"], color="C1", ls=":", lw=1, label=f"irreducible c = {fit.params['c']:.3g}")
    if prediction:
        _plot_prediction(ax, prediction)
    ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="loss",
           title=f"{fit.law}: loss vs compute ({fit.n_runs} runs)")
    ax.legend(fontsize=8)
    if groups:
        _plot_isoflops(axes[1], runs, fit, groups)
    return save_figure(fig, path, dpi=120)


def _plot_prediction(ax, prediction: dict[str, Any]) -> None:
    x, y = prediction["target_compute"], prediction["loss"]
    if prediction.get("interval"):
        lo, hi = prediction["interval"]
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", color="C3", capsize=4, zorder=4,
                    label=f"prediction {y:.4g} [{lo:.4g}, {hi:.4g}]")
    else:
        ax.scatter([x], [y], color="C3", zorder=4, label=f"prediction {y:.4g}")
    if prediction.get("actual") is not None:
        ax.scatter([x], [prediction["actual"]], marker="*", s=120, color="k", zorder=5,
                   label=f"actual {prediction['actual']:.4g} ({100 * prediction['relative_error']:+.2f}%)")


def _plot_isoflops(ax, runs: Runs, fit: Fit, groups: list[np.ndarray]) -> None:
    from matplotlib import colormaps

    for g, shade in zip(groups, np.linspace(0.1, 0.85, len(groups))):
        color = colormaps["plasma"](shade)
        c_mid = float(np.median(runs.flops[g]))
        order = g[np.argsort(runs.params[g])]
        ax.scatter(runs.params[order], runs.loss[order], color=color, s=22, zorder=3, label=f"C = {c_mid:.2g}")
        if fit.law == "chinchilla":
            n = np.geomspace(runs.params[order[0]] / 1.5, runs.params[order[-1]] * 1.5, 100)
            ax.plot(n, chinchilla_loss(n, c_mid / (6 * n), **fit.params), color=color, lw=1)
        else:
            ax.plot(runs.params[order], runs.loss[order], color=color, lw=1, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP profiles")
    ax.legend(fontsize=8)
