"""Chinchilla-form scaling laws: compute-optimal planning and fitting.

L(N, D) = E + A / N^alpha + B / D^beta with C = 6 N D. Defaults are Epoch AI's
replication of Chinchilla (the paper's rounded constants give inconsistent
token/parameter ratios). Fitting follows Chinchilla's Approach 3 (Huber loss
on log-loss residuals, L-BFGS from a grid of starts) and Approach 2 (IsoFLOP
parabolas: the loss-minimizing size per compute budget, then a power law).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import minimize
from scipy.special import logsumexp


@dataclasses.dataclass(frozen=True)
class LawConstants:
    E: float = 1.8172
    A: float = 482.01
    B: float = 2085.43
    alpha: float = 0.3478
    beta: float = 0.3658

    def loss(self, n_params, n_tokens):
        return self.E + self.A / np.power(n_params, self.alpha) + self.B / np.power(n_tokens, self.beta)


EPOCH_AI = LawConstants()


@dataclasses.dataclass(frozen=True)
class Plan:
    flops: float
    params: float
    tokens: float
    predicted_loss: float

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


def compute_optimal(flops: float, c: LawConstants = EPOCH_AI) -> Plan:
    """Minimize L(N, C / 6N) over N: closed form N* = G (C/6)^(beta/(alpha+beta))."""
    g = (c.alpha * c.A / (c.beta * c.B)) ** (1.0 / (c.alpha + c.beta))
    n = g * (flops / 6.0) ** (c.beta / (c.alpha + c.beta))
    d = flops / (6.0 * n)
    return Plan(flops, n, d, float(c.loss(n, d)))


def flops_from_chip_hours(chip_hours: float, peak_flops: float, mfu: float) -> float:
    return chip_hours * 3600.0 * peak_flops * mfu


# ----------------------------------------------------------------------------- fitting


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def fit_law(n_params: Sequence[float], n_tokens: Sequence[float], losses: Sequence[float], delta: float = 1e-3) -> LawConstants:
    """Approach 3: fit (log A, log B, log E, alpha, beta) by L-BFGS on Huber(log L_pred - log L)."""
    log_n, log_d, log_l = (np.log(np.asarray(x, dtype=np.float64)) for x in (n_params, n_tokens, losses))

    def objective(theta):
        a, b, e, alpha, beta = theta
        pred = logsumexp(np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)]), axis=0)
        return float(np.sum(_huber(pred - log_l, delta)))

    grid = itertools.product([0.0, 8.0, 16.0], [0.0, 8.0, 16.0], [-1.0, 0.5, 1.0], [0.2, 0.5], [0.2, 0.5])
    best = None
    for start in grid:
        result = minimize(objective, np.asarray(start, dtype=np.float64), method="L-BFGS-B")
        if best is None or result.fun < best.fun:
            best = result
    a, b, e, alpha, beta = best.x
    return LawConstants(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=float(alpha), beta=float(beta))


def isoflop_optima(flops: Sequence[float], n_params: Sequence[float], losses: Sequence[float]) -> dict[float, float]:
    """Approach 2: per budget, the vertex of a parabola of loss in log N (needs >= 3 sizes per budget)."""
    flops, n_params, losses = (np.asarray(x, dtype=np.float64) for x in (flops, n_params, losses))
    optima = {}
    for c in np.unique(flops):
        sel = flops == c
        if sel.sum() < 3:
            continue
        x = np.log(n_params[sel])
        a, b, _ = np.polyfit(x, losses[sel], 2)
        if a <= 0:  # no minimum inside: the ladder missed the optimum for this budget
            continue
        optima[float(c)] = float(np.exp(-b / (2 * a)))
    return optima


def power_law(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """y = k x^p, fitted in log space: (k, p)."""
    p, log_k = np.polyfit(np.log(np.asarray(xs)), np.log(np.asarray(ys)), 1)
    return float(math.exp(log_k)), float(p)


def plot_fit(path, n_params, n_tokens, losses, c: LawConstants, flops=None) -> None:
    n_params, n_tokens, losses = (np.asarray(x, dtype=np.float64) for x in (n_params, n_tokens, losses))
    fig = Figure(figsize=(11, 4.2))  # no pyplot: no global backend state
    axes = fig.subplots(1, 2)
    pred = c.loss(n_params, n_tokens)
    axes[0].scatter(pred, losses, s=18)
    lo, hi = float(min(pred.min(), losses.min())), float(max(pred.max(), losses.max()))
    axes[0].plot([lo, hi], [lo, hi], "k--", lw=1)
    axes[0].set(xlabel="fitted L(N, D)", ylabel="measured loss",
                title=f"E={c.E:.3g} A={c.A:.3g} B={c.B:.3g} α={c.alpha:.3f} β={c.beta:.3f}")
    budgets = np.asarray(flops) if flops is not None else 6 * n_params * n_tokens
    for b in np.unique(budgets):
        sel = budgets == b
        order = np.argsort(n_params[sel])
        axes[1].plot(n_params[sel][order], losses[sel][order], "o-", label=f"C={b:.2g}")
        grid = np.geomspace(n_params[sel].min() / 2, n_params[sel].max() * 2, 50)
        axes[1].plot(grid, c.loss(grid, b / (6 * grid)), ":", color=axes[1].lines[-1].get_color())
    axes[1].set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP curves (dotted: fit)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
