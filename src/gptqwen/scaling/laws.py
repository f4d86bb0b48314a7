"""The scaling-law formulas: Chinchilla L(N, D), Kaplan power laws, GPT-4's L(C) = a·C^b + c.

Pure functions on numpy arrays, no fitting here (that is `fit.py`). Parameter names follow the papers:

- Chinchilla (Hoffmann et al. 2022, approach 3): L(N, D) = E + A/N^alpha + B/D^beta. The fit works on
  (a, b, e) = (log A, log B, log E) and minimises the Huber loss of LSE(a − α log N, b − β log D, e) − log L.
- Kaplan et al. 2020: L(X) = (X_c / X)^alpha_X for X in {N, D, C}, a straight line in log-log space.
- GPT-4 technical report: L(C) = a·C^b + c with b < 0 and c the irreducible loss.
"""

from __future__ import annotations

import numpy as np

HUBER_DELTA = 1e-3  # Hoffmann et al.'s δ, in units of log-loss


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Huber_δ(r): r²/2 inside |r| ≤ δ, δ(|r| − δ/2) outside."""
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def chinchilla_loss(N: np.ndarray, D: np.ndarray, E: float, A: float, B: float, alpha: float, beta: float) -> np.ndarray:
    """L(N, D) = E + A/N^α + B/D^β."""
    return E + A / np.power(N, alpha) + B / np.power(D, beta)


def hoffmann_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                       delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Σ_runs Huber_δ(LSE(a − α log N, b − β log D, e) − log L) and its gradient in θ = (a, b, e, α, β).

    The log-sum-exp is the log of the Chinchilla prediction, computed stably; its gradient is the softmax
    of the three terms, which is why the analytic gradient is this short.
    """
    a, b, e, alpha, beta = theta
    z = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = z.max(axis=0)
    w = np.exp(z - top)
    total = w.sum(axis=0)
    r = top + np.log(total) - log_loss
    p = w / total
    dr = np.clip(r, -delta, delta)  # dHuber/dr
    grad = np.array([
        (dr * p[0]).sum(), (dr * p[1]).sum(), (dr * p[2]).sum(),
        -(dr * p[0] * log_n).sum(), -(dr * p[1] * log_d).sum(),
    ])
    return float(huber(r, delta).sum()), grad


def compute_optimal(C: np.ndarray | float, E: float, A: float, B: float, alpha: float, beta: float) -> dict:
    """Hoffmann's compute-optimal allocation for a budget C = 6ND.

    N*(C) = G (C/6)^(β/(α+β)), D*(C) = G⁻¹ (C/6)^(α/(α+β)), G = (αA / (βB))^(1/(α+β)).
    Returns G, the exponents a = β/(α+β) and b = α/(α+β), N_opt, D_opt and the loss there.
    """
    s = alpha + beta
    G = (alpha * A / (beta * B)) ** (1.0 / s)
    C = np.asarray(C, dtype=float)
    n_opt = G * (C / 6.0) ** (beta / s)
    d_opt = (C / 6.0) ** (alpha / s) / G
    return {"G": G, "a": beta / s, "b": alpha / s, "N_opt": n_opt, "D_opt": d_opt,
            "loss": chinchilla_loss(n_opt, d_opt, E, A, B, alpha, beta)}


def power_law(X: np.ndarray, Xc: float, alpha: float) -> np.ndarray:
    """Kaplan's L(X) = (X_c / X)^α."""
    return np.power(Xc / X, alpha)


def gpt4_loss(C: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """L(C) = a·C^b + c."""
    return a * np.power(C, b) + c
