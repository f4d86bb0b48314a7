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
from gptqwen.scaling.fit import Fit, Target


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
