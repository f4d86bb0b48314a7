"""Fit + bootstrap + prediction, assembled into the report that `gptqwen scaling fit/predict` prints.

The bootstrap resamples the runs with replacement, refits the law on each resample and takes percentile
intervals of every parameter, every derived quantity and the prediction. Resamples the law cannot be
fitted on (e.g. all draws at one N) are counted as failed; more than half failing is an error, since the
intervals would then describe a biased subset.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gptqwen.errors import UserError
from gptqwen.scaling.data import Runs
from gptqwen.scaling.fit import Fit, Target, compute_frontier


def bootstrap(law, runs: Runs, fit: Fit, n: int, seed: int = 0, target: Target | None = None,
              confidence: float = 0.95) -> dict[str, Any]:
    """Percentile intervals of the parameters, derived quantities and (with `target`) the prediction."""
    if n < 0:
        raise UserError("--bootstrap must be 0 (no intervals) or a positive number of resamples")
    if not 0 < confidence < 1:
        raise UserError(f"--confidence must be between 0 and 1, not {confidence}")
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    failed = 0
    for _ in range(n):
        try:
            refit = law.fit(runs.subset(rng.integers(0, len(runs), len(runs))), warm=fit)
            values = {**refit.params, **law.derived(refit.params, target)}
            if target is not None:
                values["prediction"] = law.predict(refit.params, target)
        except UserError:
            failed += 1
            continue
        for k, v in values.items():
            samples.setdefault(k, []).append(v)
    if n and failed > n / 2:
        raise UserError(f"{failed} of {n} bootstrap resamples of {runs.source} could not be fitted; the runs are too "
                        "few or too clustered for intervals (add runs, or pass --bootstrap 0)")
    tail = 50 * (1 - confidence)
    intervals = {k: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for k, v in samples.items()}
    return {"samples": n, "failed": failed, "confidence": confidence, "intervals": intervals}


def within_fraction(runs: Runs, target_compute: float, fraction: float) -> np.ndarray:
    """Mask of the runs using at most `fraction` of the target's compute (the GPT-4 report's ≤ 1/100 rule)."""
    if not 0 < fraction <= 1:
        raise UserError(f"--max-fraction must be in (0, 1], not {fraction}")
    return runs.flops <= fraction * target_compute


def report(law, runs: Runs, n_bootstrap: int = 0, seed: int = 0, confidence: float = 0.95,
           target: Target | None = None, actual: float | None = None) -> tuple[dict[str, Any], Fit]:
    """Fit `law` to `runs` (and bootstrap it); the JSON-able report and the fit itself."""
    fit = law.fit(runs)
    boot = bootstrap(law, runs, fit, n_bootstrap, seed, target, confidence) if n_bootstrap else None
    intervals = boot["intervals"] if boot else {}
    out: dict[str, Any] = {
        "law": law.name,
        "file": runs.source,
        "params": fit.params,
        "intervals": {k: intervals[k] for k in fit.params if k in intervals},
        "derived": law.derived(fit.params, target),
        "diagnostics": {"objective": fit.objective, "rms_log_loss": fit.rms, "n_runs": fit.n_runs,
                        "converged": fit.converged, "notes": fit.notes},
    }
    out["intervals"].update({k: intervals[k] for k in out["derived"] if k in intervals})
    if runs.spread:
        out["diagnostics"]["spread"] = runs.spread
        out["diagnostics"]["notes"] = [*fit.notes, (
            f"{runs.spread['points']} points were run more than once (same N, D and C; e.g. seeds): their losses spread by "
            f"{100 * runs.spread['median']:.2g}% of the loss (median sample std; max {100 * runs.spread['max']:.2g}%)")]
    if boot:
        out["diagnostics"]["bootstrap"] = {k: boot[k] for k in ("samples", "failed", "confidence")}
    if target is not None:
        pred: dict[str, Any] = {"target": {k: v for k, v in vars(target).items() if v is not None},
                                "target_compute": target.compute, "loss": law.predict(fit.params, target),
                                "interval": intervals.get("prediction")}
        if actual is not None:
            if actual <= 0:
                raise UserError(f"--actual must be a positive loss, not {actual}")
            pred.update(actual=actual, relative_error=(pred["loss"] - actual) / actual)
        out["prediction"] = pred
    return out, fit


def holdout(law, runs: Runs, fraction: float, frontier: bool = False) -> dict[str, Any]:
    """Leave the most expensive runs out, fit `law` on the rest and predict the ones left out.

    The runs with compute above `fraction` × the largest are held out (0.7 on a sweep of budgets a factor 2
    apart holds out the top budget, whose runs' compute differs a little from the budget's). Chinchilla
    predicts every held-out run from its N and D; a law of compute alone (gpt4, kaplan's L(C)) predicts the
    best loss reachable at a budget, so it is scored only on held-out runs on the compute frontier of all the
    runs. `frontier` fits only the frontier of the fitting runs."""
    if not 0 < fraction < 1:
        raise UserError(f"--holdout must be in (0, 1), not {fraction}")
    held = runs.flops > fraction * runs.flops.max()
    fitting = np.flatnonzero(~held)
    if frontier:
        fitting = fitting[compute_frontier(runs.subset(fitting))]
    if len(fitting) == 0:
        raise UserError(f"--holdout {fraction:g} leaves no runs of {runs.source} to fit; raise it")
    fit = law.fit(runs.subset(fitting))
    scored = np.flatnonzero(held)
    if law.name != "chinchilla":
        scored = np.intersect1d(scored, compute_frontier(runs))
    rows = []
    for i in scored:
        target = (Target(params=float(runs.params[i]), tokens=float(runs.tokens[i])) if law.name == "chinchilla"
                  else Target(flops=float(runs.flops[i])))
        predicted = law.predict(fit.params, target)
        rows.append({"line": int(runs.lines[i]), "params": float(runs.params[i]), "tokens": float(runs.tokens[i]),
                     "flops": float(runs.flops[i]), "loss": float(runs.loss[i]), "predicted": predicted,
                     "relative_error": (predicted - runs.loss[i]) / runs.loss[i]})
    errors = np.abs([r["relative_error"] for r in rows]) if rows else np.array([np.nan])
    return {"law": law.name, "file": runs.source, "holdout": fraction, "fitted_lines": [int(n) for n in runs.lines[fitting]],
            "params": fit.params, "held_out": rows, "mean_abs_error": float(errors.mean()),
            "max_abs_error": float(errors.max())}
