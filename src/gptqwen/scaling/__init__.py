"""Scaling laws: read runs, fit Chinchilla / Kaplan / GPT-4 laws, bootstrap intervals, predict, plot.

    from gptqwen.scaling import read_runs, get_law, report
    out, fit = report(get_law("chinchilla"), read_runs("runs.csv"), n_bootstrap=100)

`data` reads and validates the runs CSV, `laws` holds the formulas, `fit` the fitters, `analysis` the
bootstrap and prediction report, `plot` the figures (matplotlib). scipy is needed for fitting (extra `scaling`).
"""

from gptqwen.scaling.analysis import bootstrap, holdout, report, within_fraction
from gptqwen.scaling.data import Runs, make_runs, read_runs
from gptqwen.scaling.fit import LAWS, Fit, Target, get_law

__all__ = ["LAWS", "Fit", "Runs", "Target", "bootstrap", "get_law", "holdout", "make_runs", "read_runs", "report", "within_fraction"]
