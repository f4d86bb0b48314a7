"""Reading and validating the runs a scaling law is fitted to: a CSV with columns params, tokens, loss (and flops).

One row per training run: N = `params`, D = `tokens`, the final `loss`, and optionally the run's
training compute `flops` (default C = 6·N·D). Other columns (a sweep writes several) are ignored. Rows
with the same N, D and C are repeats of one run (other seeds): they become one point at their mean loss,
and their spread is kept (`Runs.spread`) as the run-to-run noise no prediction can beat.
Every problem is reported as a `UserError` naming the file's line numbers, so a user can fix the rows.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptqwen.errors import UserError

REQUIRED = ("params", "tokens", "loss")


@dataclass(frozen=True)
class Runs:
    """The runs of one CSV as float arrays, with the file line each came from (for messages)."""

    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    flops: np.ndarray
    lines: np.ndarray
    source: str = "<runs>"
    spread: dict | None = None  # repeats: {"points": k, "median": relative std, "max": ...}; None without repeats
    loss_std: np.ndarray | None = None  # with repeats: each point's sample std of its losses (0 for a single run)

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, idx: np.ndarray) -> Runs:
        """The runs at positions `idx` (a boolean mask or indices; repeats allowed, for the bootstrap)."""
        std = None if self.loss_std is None else self.loss_std[idx]
        return Runs(self.params[idx], self.tokens[idx], self.loss[idx], self.flops[idx], self.lines[idx], self.source,
                    self.spread, std)

    def describe_lines(self, idx: np.ndarray | None = None) -> str:
        """'lines 3, 7, 9' for the runs at `idx` (all runs by default)."""
        lines = self.lines if idx is None else self.lines[idx]
        return ("line " if len(lines) == 1 else "lines ") + ", ".join(str(int(n)) for n in lines)


def make_runs(params, tokens, loss, flops=None, source: str = "<runs>") -> Runs:
    """Runs from arrays (tests, sweeps); validated like a CSV, with line k+2 for the k-th run."""
    p, t, l = (np.asarray(x, dtype=float) for x in (params, tokens, loss))
    f = 6.0 * p * t if flops is None else np.asarray(flops, dtype=float)
    if not (p.shape == t.shape == l.shape == f.shape) or p.ndim != 1:
        raise UserError("params, tokens, loss (and flops) must be 1-D arrays of the same length")
    runs = Runs(p, t, l, f, np.arange(len(p)) + 2, source)
    _check_values(runs)
    return runs


def read_runs(path: str | Path, flops_column: str = "flops") -> Runs:
    """Read and validate a runs CSV; line numbers in errors count the header as line 1.

    The compute C comes from `flops_column` (e.g. a sweep's `flops_exact`), else 6·N·D when the CSV has
    no `flops` column."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"'{path}' does not exist; give a CSV with columns {', '.join(REQUIRED)} (optionally flops)")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"'{path}' is not a readable CSV ({e})") from None
    if not rows:
        raise UserError(f"'{path}' is empty; it needs a header line with columns {', '.join(REQUIRED)}")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise UserError(f"'{path}' lacks the column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'}); "
                        f"the header must name {', '.join(REQUIRED)} and optionally flops")
    if flops_column != "flops" and flops_column not in header:
        raise UserError(f"'{path}' has no column {flops_column!r} to take the compute from "
                        f"(found: {', '.join(header)})")
    wanted = [*REQUIRED, flops_column] if flops_column in header else list(REQUIRED)
    cols = {c: header.index(c) for c in wanted}
    values: dict[str, list[float]] = {c: [] for c in wanted}
    lines, bad = [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        for c, i in cols.items():
            cell = row[i].strip() if i < len(row) else ""
            try:
                values[c].append(float(cell))
            except ValueError:
                bad.append(f"line {lineno}: {c}={cell!r}")
                values[c].append(math.nan)
        lines.append(lineno)
    if bad:
        raise UserError(f"'{path}': non-numeric values at {'; '.join(bad[:10])}" + (" ..." if len(bad) > 10 else ""))
    if not lines:
        raise UserError(f"'{path}' has a header but no runs")
    arr = {c: np.array(v) for c, v in values.items()}
    flops = arr[flops_column] if flops_column in arr else 6.0 * arr["params"] * arr["tokens"]
    runs = Runs(arr["params"], arr["tokens"], arr["loss"], flops, np.array(lines), str(path))
    _check_values(runs)
    return merge_repeats(runs)


def merge_repeats(runs: Runs) -> Runs:
    """One point per distinct (N, D, C): the mean loss of its repeats, on the first repeat's line.

    With repeats, `spread` holds how many points have them and the median and largest relative sample
    standard deviation of their losses (std / mean)."""
    keys = np.stack([runs.params, runs.tokens, runs.flops], axis=1)
    _, first, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    if len(first) == len(runs):
        return runs
    order = np.sort(first)  # keep the file's order
    rank = np.empty(len(first), dtype=int)
    rank[np.argsort(first)] = np.arange(len(first))
    g = rank[group]
    counts = np.bincount(g)
    loss = np.bincount(g, weights=runs.loss) / counts
    repeated = counts > 1
    std = np.zeros(len(order))
    std[repeated] = np.sqrt(np.bincount(g, weights=(runs.loss - loss[g]) ** 2)[repeated] / (counts[repeated] - 1))
    rel = std[repeated] / loss[repeated]
    spread = {"points": int(repeated.sum()), "median": float(np.median(rel)), "max": float(np.max(rel))}
    return Runs(runs.params[order], runs.tokens[order], loss, runs.flops[order], runs.lines[order], runs.source, spread,
                std)


def _check_values(runs: Runs) -> None:
    """Every value must be finite and positive: the laws take logs of all of them."""
    problems = []
    for name in ("params", "tokens", "loss", "flops"):
        col = getattr(runs, name)
        bad = ~(np.isfinite(col) & (col > 0))
        if bad.any():
            shown = ", ".join(f"line {int(n)} ({name}={v:g})" for n, v in zip(runs.lines[bad][:10], col[bad][:10]))
            problems.append(f"{name} must be positive and finite: {shown}")
    if problems:
        raise UserError(f"{runs.source}: " + "; ".join(problems))


def require_spread(runs: Runs, law: str, min_runs: int, distinct: dict[str, int]) -> None:
    """Raise unless there are `min_runs` runs and enough distinct values of each named column."""
    if len(runs) < min_runs:
        raise UserError(f"the {law} law needs at least {min_runs} runs; {runs.source} has {len(runs)} "
                        f"({runs.describe_lines()})")
    for col, k in distinct.items():
        n = len(np.unique(getattr(runs, col)))
        if n < k:
            raise UserError(f"the {law} law needs at least {k} distinct values of {col}; {runs.source} has {n} "
                            f"({runs.describe_lines()}): add runs at other {col}")
