"""Fitting the three scaling laws to runs, and checking that a fit means something.

Each law is an object with `fit(runs, warm=None) -> Fit`, `predict(params, target) -> float` and
`derived(params) -> dict` (quantities computed from the parameters, e.g. compute-optimal exponents);
`LAWS` maps the CLI names to them. A fit that did not converge, ran to the edge of its search space or
gives non-finite or non-decreasing laws raises `UserError` saying so: never a silent nonsense fit.

- chinchilla: Hoffmann et al.'s approach 3 — L-BFGS on the Huber (δ = 1e-3) loss of log-loss, started from
  their grid of initialisations (α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}; 4,500
  starts). `starts` runs L-BFGS from every grid point ("all") or from the k grid points whose starting
  objective is lowest (default 128: the full grid takes ~25 s and finds the same optimum on the tests'
  data); a bootstrap refit starts from the full fit's optimum plus the best 8 grid points of its resample.
- kaplan: three least-squares lines in log-log space — L(N) on the run with the most tokens at each N,
  L(D) on the run with the most parameters at each D, L(C) on the compute frontier (runs with a lower loss
  than every cheaper run). A sub-law with fewer than 3 points is skipped and the skip noted.
- gpt4: L(C) = a·C^b + c by bounded least squares on log-loss (b ∈ [−5, 0], 0 ≤ c < the smallest loss).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from gptqwen.errors import UserError, require
from gptqwen.scaling.data import Runs, require_spread
from gptqwen.scaling.laws import chinchilla_loss, compute_optimal, gpt4_loss, hoffmann_objective, huber, power_law


@dataclass
class Fit:
    """One fitted law: its parameters and how well it fits the runs it saw."""

    law: str
    params: dict[str, float]
    objective: float  # the minimised loss (Hoffmann's Huber sum; sum of squares in log-loss otherwise)
    rms: float  # residual RMS in log-loss over the runs the law used
    n_runs: int
    converged: bool
    notes: list[str] = field(default_factory=list)
    theta: np.ndarray | None = None  # the optimiser's own parameterisation, to warm-start refits


@dataclass(frozen=True)
class Target:
    """What to predict: a run of N parameters on D tokens, and/or a compute budget C in FLOPs."""

    params: float | None = None
    tokens: float | None = None
    flops: float | None = None

    @property
    def compute(self) -> float | None:
        """The target's training compute: the given FLOPs, else 6·N·D."""
        if self.flops is not None:
            return self.flops
        return 6.0 * self.params * self.tokens if self.params and self.tokens else None


def _scipy_optimize():
    return require("scipy.optimize", "scaling", "fitting scaling laws")


def _check_finite(law: str, params: dict[str, float]) -> None:
    bad = [k for k, v in params.items() if not np.isfinite(v)]
    if bad:
        raise UserError(f"the {law} fit gave non-finite {', '.join(bad)}; the runs do not determine this law")


class Chinchilla:
    """L(N, D) = E + A/N^α + B/D^β, fitted as Hoffmann et al. (2022) did."""

    name = "chinchilla"
    GRID = np.array(list(itertools.product(np.arange(0, 26, 5.0), np.arange(0, 26, 5.0), np.arange(-1, 1.01, 0.5),
                                           np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5))))  # (a, b, e, α, β)
    BOOTSTRAP_STARTS = 8

    def __init__(self, starts: int | str = 128) -> None:
        if starts != "all" and (not isinstance(starts, int) or starts < 1):
            raise UserError(f"starts must be 'all' or a positive number of grid points, not {starts!r}")
        self.starts = starts

    def _grid_starts(self, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, k: int | str) -> np.ndarray:
        if k == "all" or k >= len(self.GRID):
            return self.GRID
        g = self.GRID[:, :, None]
        pred = np.logaddexp.reduce(np.stack([g[:, 0] - g[:, 3] * log_n, g[:, 1] - g[:, 4] * log_d,
                                             np.broadcast_to(g[:, 2], (len(g), len(log_n)))]), axis=0)
        return self.GRID[np.argsort(huber(pred - log_loss).sum(axis=1), kind="stable")[:k]]

    def fit(self, runs: Runs, warm: Fit | None = None) -> Fit:
        require_spread(runs, self.name, 5, {"params": 2, "tokens": 2})
        minimize = _scipy_optimize().minimize
        data = (np.log(runs.params), np.log(runs.tokens), np.log(runs.loss))
        starts = self._grid_starts(*data, self.BOOTSTRAP_STARTS if warm is not None else self.starts)
        if warm is not None and warm.theta is not None:
            starts = np.vstack([warm.theta, starts])
        best = None
        for x0 in starts:
            res = minimize(hoffmann_objective, x0, args=data, jac=True, method="L-BFGS-B",
                           options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12})
            if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
        if best is None:
            raise UserError(f"the chinchilla fit gave a non-finite objective from every start on {runs.source}")
        a, b, e, alpha, beta = best.x
        with np.errstate(over="ignore"):  # a runaway log A or log B becomes inf, which _check reports by name
            params = {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)),
                      "alpha": float(alpha), "beta": float(beta)}
        if not best.success:
            raise UserError(f"the chinchilla fit did not converge on {runs.source} ({best.message}); "
                            "add runs or check them for outliers")
        self._check(params, a, b, e, runs)
        pred = chinchilla_loss(runs.params, runs.tokens, **params)
        rms = float(np.sqrt(np.mean((np.log(pred) - data[2]) ** 2)))
        return Fit(self.name, params, float(best.fun), rms, len(runs), True, theta=best.x)

    def _check(self, params: dict[str, float], a: float, b: float, e: float, runs: Runs) -> None:
        _check_finite(self.name, params)
        for k, col in (("alpha", "params"), ("beta", "tokens")):
            if params[k] <= 1e-6:
                raise UserError(f"the chinchilla fit gives {k} = {params[k]:.3g}: the loss of the runs in {runs.source} "
                                f"does not fall with {col}; check the runs or add ones spanning a wider range")
            if params[k] > 2.5:
                raise UserError(f"the chinchilla fit ran past the edge of the initialisation grid ({k} = {params[k]:.3g} "
                                f"> 2): the runs do not pin the law down; add runs spanning a wider range of {col}")
        if e < -5.0:  # E = e^e vanished: nothing in the runs sets the irreducible loss
            raise UserError(f"the chinchilla fit ran past the edge of the initialisation grid (log E = {e:.3g}, grid -1..1): "
                            f"the runs in {runs.source} do not determine the irreducible loss E; add larger or longer runs")
        for k, v in (("log A", a), ("log B", b)):
            if not -5.0 <= v <= 40.0:
                raise UserError(f"the chinchilla fit ran past the edge of the initialisation grid ({k} = {v:.3g}, grid "
                                "0..25): the runs do not pin the law down; add runs spanning a wider range of N and D")

    def predict(self, params: dict[str, float], target: Target) -> float:
        if target.params and target.tokens:
            return float(chinchilla_loss(target.params, target.tokens, **params))
        if target.flops:  # at the compute-optimal allocation of that budget
            return float(compute_optimal(target.flops, **params)["loss"])
        raise UserError("chinchilla predicts from --target-params and --target-tokens (or --target-flops alone, "
                        "at the compute-optimal N and D)")

    def derived(self, params: dict[str, float], target: Target | None = None) -> dict[str, float]:
        opt = compute_optimal(target.compute if target and target.compute else 1.0, **params)
        out = {"G": float(opt["G"]), "a": float(opt["a"]), "b": float(opt["b"])}
        if target and target.compute:
            out.update(N_opt=float(opt["N_opt"]), D_opt=float(opt["D_opt"]))
        return out


def _line_fit(log_x: np.ndarray, log_loss: np.ndarray) -> tuple[float, float, np.ndarray]:
    """log L = α log X_c − α log X by least squares; returns (X_c, α, residuals)."""
    slope, intercept = np.polyfit(log_x, log_loss, 1)
    alpha = -slope
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        xc = float(np.exp(intercept / alpha))
    return xc, float(alpha), log_loss - (intercept + slope * log_x)


def _best_per_value(key: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each distinct `key`, the index of the run with the largest `other`."""
    order = np.lexsort((-other, key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    return order[first]


def compute_frontier(runs: Runs) -> np.ndarray:
    """Indices of the runs whose loss is lower than that of every run with less compute."""
    order = np.lexsort((runs.loss, runs.flops))
    keep, best = [], np.inf
    for i in order:
        if runs.loss[i] < best:
            keep.append(i)
            best = runs.loss[i]
    return np.array(keep, dtype=int)


class Kaplan:
    """Kaplan et al. (2020): L(N) = (N_c/N)^α_N, L(D) = (D_c/D)^α_D, L(C) = (C_c/C)^α_C."""

    name = "kaplan"
    SUBLAWS = {  # name -> (column, which runs, how they are chosen)
        "N": ("params", lambda r: _best_per_value(r.params, r.tokens), "the run with the most tokens at each N"),
        "D": ("tokens", lambda r: _best_per_value(r.tokens, r.params), "the run with the most parameters at each D"),
        "C": ("flops", compute_frontier, "the compute frontier (lower loss than every cheaper run)"),
    }

    def fit(self, runs: Runs, warm: Fit | None = None) -> Fit:
        require_spread(runs, self.name, 3, {})
        params, notes, residuals = {}, [], []
        for sub, (col, pick, how) in self.SUBLAWS.items():
            idx = pick(runs)
            if len(np.unique(getattr(runs, col)[idx])) < 3:
                notes.append(f"L({sub}) skipped: fewer than 3 distinct {col} among {how}")
                continue
            xc, alpha, res = _line_fit(np.log(getattr(runs, col)[idx]), np.log(runs.loss[idx]))
            params[f"{sub}c"], params[f"alpha_{sub}"] = xc, alpha
            residuals.append(res)
            notes.append(f"L({sub}) fitted on {len(idx)} runs: {how}")
        if not params:
            raise UserError(f"the kaplan law needs at least 3 distinct N, D or C among the runs of {runs.source} "
                            f"({runs.describe_lines()})")
        for sub in self.SUBLAWS:
            if params.get(f"alpha_{sub}", 1.0) <= 1e-4:
                raise UserError(f"the kaplan L({sub}) fit gives alpha_{sub} = {params[f'alpha_{sub}']:.3g}: the loss of "
                                f"the runs in {runs.source} does not fall with {sub}")
        _check_finite(self.name, params)
        r = np.concatenate(residuals)
        return Fit(self.name, params, float((r ** 2).sum()), float(np.sqrt(np.mean(r ** 2))), len(runs), True, notes)

    def predict(self, params: dict[str, float], target: Target) -> float:
        if target.flops:
            sub, x = "C", target.flops
        elif target.params and not target.tokens:
            sub, x = "N", target.params
        elif target.tokens and not target.params:
            sub, x = "D", target.tokens
        else:
            raise UserError("kaplan predicts from one variable: give --target-flops (the L(C) law), or only "
                            "--target-params (L(N)) or only --target-tokens (L(D))")
        if f"alpha_{sub}" not in params:
            raise UserError(f"the kaplan L({sub}) law was not fitted (too few distinct points), so it cannot predict")
        return float(power_law(x, params[f"{sub}c"], params[f"alpha_{sub}"]))

    def derived(self, params: dict[str, float], target: Target | None = None) -> dict[str, float]:
        return {}


class GPT4:
    """L(C) = a·C^b + c, the GPT-4 report's law with an irreducible loss c."""

    name = "gpt4"

    def fit(self, runs: Runs, warm: Fit | None = None) -> Fit:
        require_spread(runs, self.name, 4, {"flops": 3})
        least_squares = _scipy_optimize().least_squares
        log_c, log_loss = np.log(runs.flops), np.log(runs.loss)
        c0 = float(np.mean(log_c))  # centre log C so the amplitude is well scaled
        c_max = float(runs.loss.min()) * (1 - 1e-9)

        def residual(t: np.ndarray) -> np.ndarray:  # t = (log a', b, c) with a' = a·exp(b·c0)
            return np.log(t[2] + np.exp(t[0] + t[1] * (log_c - c0))) - log_loss

        starts = [np.array([np.log(max(runs.loss.mean() - f * c_max, 1e-6)), -0.3, f * c_max]) for f in (0.0, 0.5, 0.9)]
        if warm is not None and warm.theta is not None:
            starts.insert(0, np.clip(warm.theta, [-np.inf, -5.0, 0.0], [np.inf, 0.0, c_max]))
        best = None
        for x0 in starts:
            res = least_squares(residual, x0, bounds=([-np.inf, -5.0, 0.0], [np.inf, 0.0, c_max]), method="trf",
                                xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=5000)
            if best is None or res.cost < best.cost:
                best = res
        la, b, c = best.x
        params = {"a": float(np.exp(la - b * c0)), "b": float(b), "c": float(c)}
        _check_finite(self.name, params)
        if not best.success:
            raise UserError(f"the gpt4 fit did not converge on {runs.source} ({best.message})")
        if b > -1e-6:
            raise UserError(f"the gpt4 fit gives b = {b:.3g}: the loss of the runs in {runs.source} does not fall with compute")
        if b <= -5.0 + 1e-6 or c >= c_max * (1 - 1e-6):
            edge = "b reached its bound -5" if b <= -5.0 + 1e-6 else "c reached the smallest observed loss"
            raise UserError(f"the gpt4 fit ran to the edge of its search space ({edge}): the runs in {runs.source} "
                            "do not pin the law down; add runs over a wider range of compute")
        notes = ["c = 0: a pure power law fits best"] if c <= 1e-9 else []
        rms = float(np.sqrt(np.mean(best.fun ** 2)))
        return Fit(self.name, params, float((best.fun ** 2).sum()), rms, len(runs), True, notes, theta=best.x)

    def predict(self, params: dict[str, float], target: Target) -> float:
        if not target.compute:
            raise UserError("gpt4 predicts from --target-flops (or --target-params with --target-tokens, C = 6ND)")
        return float(gpt4_loss(target.compute, **params))

    def derived(self, params: dict[str, float], target: Target | None = None) -> dict[str, float]:
        return {}


LAWS = {"chinchilla": Chinchilla, "kaplan": Kaplan, "gpt4": GPT4}


def get_law(name: str, **options) -> Chinchilla | Kaplan | GPT4:
    """The law called `name` (chinchilla takes `starts`)."""
    if name not in LAWS:
        raise UserError(f"unknown law '{name}'; choose one of {', '.join(LAWS)}")
    return LAWS[name](**options) if name == "chinchilla" else LAWS[name]()
