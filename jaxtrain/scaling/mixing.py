"""Data mixing laws: sampling proxy mixtures, fitting the law, proposing a mixture.

The law is the log-linear form of Data Mixing Laws (Ye et al., 2024), for the loss on one target domain as
a function of the training shares r (r_j >= 0, sum r_j = 1):

    L(r) = c + k * exp(sum_j t_j r_j)

Because the shares sum to 1, t + a (every t_j shifted by a) is the same law with k * exp(a); the fit
reports the centred t (sum t_j = 0). It is fitted by trust-region least squares with the exact Jacobian from several
starts of t (c and k, linear for a given t, solved exactly for each start).

The repetition bound (`share_caps`): at the planned full run (B training tokens: train.steps x
tokens_per_step) no source may be repeated more than E epochs, E = max(max_epochs, B / N) (N: the trained
sources' tokens; B / N is what the natural mixture repeats every source; max_epochs defaults to 4, after
Muennighoff et al. 2023: up to about 4 epochs, repeated tokens are worth almost as much as new ones). So
source j's share is capped at u_j = min(1, E * n_j / B): the natural mixture always satisfies it, and a small
source cannot be given a share the full run would have to repeat more often. The proxies are sampled inside
the same bounds, so the fit never has to extrapolate to reach a mixture the full run may use.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import least_squares, linprog, minimize

FLOOR = 1e-3  # the least share a proxy or the proposal gives a source (a weight of 0 would mean "unweighted")
MAX_EPOCHS = 4.0  # default repetition bound at the full run (Muennighoff et al. 2023)
T_BOUND = 30.0  # |t_j| limit while fitting: keeps exp() finite


def share_caps(tokens: Sequence[float], full_budget: float, max_epochs: float = MAX_EPOCHS) -> np.ndarray:
    """Each source's largest share under the repetition bound (see the module docstring)."""
    n = np.asarray(tokens, dtype=np.float64)
    epochs = max(max_epochs, full_budget / n.sum())
    return np.minimum(1.0, epochs * n / full_budget)


def bound(r: Sequence[float], caps: Sequence[float], floor: float = FLOOR) -> np.ndarray:
    """r moved into {sum 1, floor <= r_j <= caps_j}: floored, then shares above their cap clipped and the excess
    given to the others in proportion to their shares (repeated until none is above its cap)."""
    upper = np.maximum(np.asarray(caps, dtype=np.float64), floor)
    r = np.maximum(np.asarray(r, dtype=np.float64), floor)
    r = r / r.sum()
    for _ in range(len(r) + 1):
        r = np.minimum(r, upper)
        free = r < upper - 1e-15
        excess = 1.0 - r.sum()
        if excess < 1e-12 or not free.any():
            break
        r[free] += excess * r[free] / r[free].sum()
    return r


def sample_mixtures(natural: Sequence[float], caps: Sequence[float], n: int, seed: int = 0,
                    concentration: float | None = None) -> np.ndarray:
    """n mixtures (n x K): the natural one first, then draws from Dirichlet(concentration * natural) (a mean of
    the natural shares; concentration K by default, a broad spread), each moved inside the bounds. Mixture i
    depends only on (natural, caps, seed, i): asking for more proxies later keeps the earlier ones."""
    p = np.asarray(natural, dtype=np.float64)
    rng = np.random.default_rng(seed)
    alpha = (concentration or len(p)) * p
    out = [bound(p, caps)]
    for _ in range(n - 1):
        out.append(bound(rng.dirichlet(np.maximum(alpha, 1e-3)), caps))
    return np.stack(out)


@dataclasses.dataclass(frozen=True)
class MixingLaw:
    c: float
    k: float
    t: tuple[float, ...]

    def predict(self, r_PxK) -> np.ndarray:
        r_PxK = np.atleast_2d(np.asarray(r_PxK, dtype=np.float64))
        return self.c + self.k * np.exp(r_PxK @ np.asarray(self.t))


def _solve_ck(e_P: np.ndarray, y_P: np.ndarray) -> tuple[float, float]:
    sol, *_ = np.linalg.lstsq(np.stack([np.ones_like(e_P), e_P], axis=1), y_P, rcond=None)
    return float(sol[0]), float(sol[1])


def fit_law(r_PxK, y_P, starts: int = 6, ridge: float = 1e-8) -> MixingLaw:
    """The least-squares law through (mixture, loss) points (see the module docstring): trust-region least
    squares on (c, k, t) with the exact Jacobian, from several starts of t (c and k solved for each). A small
    ridge on the centred t picks one answer when there are fewer points than parameters."""
    r_PxK, y_P = np.asarray(r_PxK, dtype=np.float64), np.asarray(y_P, dtype=np.float64)
    scale, k_dim = float(np.std(y_P)) or 1.0, r_PxK.shape[1]
    centre = np.sqrt(ridge) * (np.eye(k_dim) - 1.0 / k_dim)

    def residuals(x):
        return np.r_[(x[0] + x[1] * np.exp(r_PxK @ x[2:]) - y_P) / scale, centre @ x[2:]]

    def jacobian(x):
        e = np.exp(r_PxK @ x[2:])
        top = np.column_stack([np.ones_like(e), e, x[1] * e[:, None] * r_PxK]) / scale
        return np.vstack([top, np.column_stack([np.zeros((k_dim, 2)), centre])])

    rng = np.random.default_rng(0)
    fits = []
    for t0 in [np.zeros(k_dim), *[rng.normal(0, 3, k_dim) for _ in range(starts - 1)]]:
        x0 = np.r_[_solve_ck(np.exp(r_PxK @ t0), y_P), t0]
        lo, hi = np.r_[-np.inf, -np.inf, [-T_BOUND] * k_dim], np.r_[np.inf, np.inf, [T_BOUND] * k_dim]
        fits.append(least_squares(residuals, x0, jac=jacobian, bounds=(lo, hi), xtol=1e-12, ftol=1e-12, gtol=1e-12,
                                  max_nfev=100))
    best = min(fits, key=lambda res: res.cost).x[2:]
    t = best - best.mean()  # the centred gauge: exp(r.t) = exp(r.t_c) * exp(mean t) when sum r = 1
    c, k = _solve_ck(np.exp(r_PxK @ t), y_P)
    return MixingLaw(c, k, tuple(float(x) for x in t))


def held_out_errors(r_PxK, y_P, fit: Callable = fit_law) -> dict:
    """Leave-one-out: each point predicted by the law fitted on the others. Also the error of predicting the
    others' mean (a law that does not beat it has learned nothing about mixtures)."""
    r_PxK, y_P = np.asarray(r_PxK, dtype=np.float64), np.asarray(y_P, dtype=np.float64)
    predicted, constant = [], []
    for i in range(len(y_P)):
        keep = np.arange(len(y_P)) != i
        predicted.append(float(fit(r_PxK[keep], y_P[keep]).predict(r_PxK[i])[0]))
        constant.append(float(y_P[keep].mean()))
    predicted_P = np.asarray(predicted)
    return {"predicted": predicted, "mae": float(np.mean(np.abs(predicted_P - y_P))),
            "mean_baseline_mae": float(np.mean(np.abs(np.asarray(constant) - y_P)))}


def propose(law: MixingLaw, caps: Sequence[float], starts_SxK, floor: float = FLOOR) -> np.ndarray:
    """The mixture minimizing the law on {sum 1, floor <= r_j <= caps_j} (SLSQP from each start and from the
    best of a dense random search of the region)."""
    caps = np.maximum(np.asarray(caps, dtype=np.float64), floor)
    k_dim = len(caps)
    dense = np.stack([bound(r, caps, floor) for r in np.random.default_rng(0).dirichlet(np.ones(k_dim), 2048)])
    candidates = [*np.atleast_2d(starts_SxK), dense[np.argmin(law.predict(dense))]]
    best = min(candidates, key=lambda r: law.predict(r)[0])
    for x0 in candidates:
        res = minimize(lambda r: float(law.predict(r)[0]), bound(x0, caps, floor), method="SLSQP",
                       bounds=[(floor, u) for u in caps], constraints=[{"type": "eq", "fun": lambda r: r.sum() - 1.0}])
        r = bound(np.clip(res.x, floor, caps), caps, floor)
        if law.predict(r)[0] < law.predict(best)[0]:
            best = r
    return bound(best, caps, floor)


def propose_in_hull(law: MixingLaw, points_PxK) -> np.ndarray:
    """The mixture minimizing the law among convex combinations of the sampled points (no extrapolation)."""
    points_PxK = np.asarray(points_PxK, dtype=np.float64)
    p = len(points_PxK)
    res = minimize(lambda lam: float(law.predict(lam @ points_PxK)[0]), np.full(p, 1.0 / p), method="SLSQP",
                   bounds=[(0.0, 1.0)] * p, constraints=[{"type": "eq", "fun": lambda lam: lam.sum() - 1.0}])
    best = np.clip(res.x, 0.0, None) @ points_PxK
    best = best / best.sum()
    sampled = points_PxK[np.argmin(law.predict(points_PxK))]
    return best if law.predict(best)[0] <= law.predict(sampled)[0] else sampled


def hull_distance(r_K, points_PxK) -> float:
    """L1 distance from r to the convex hull of the points (0: inside). A linear program: r = sum_i l_i p_i + s,
    l >= 0, sum l = 1, minimize |s|_1."""
    points_PxK = np.asarray(points_PxK, dtype=np.float64)
    p, k = points_PxK.shape
    a_eq = np.zeros((k + 1, p + 2 * k))
    a_eq[:k, :p], a_eq[:k, p:p + k], a_eq[:k, p + k:] = points_PxK.T, np.eye(k), -np.eye(k)
    a_eq[k, :p] = 1.0
    res = linprog(np.r_[np.zeros(p), np.ones(2 * k)], A_eq=a_eq, b_eq=np.r_[np.asarray(r_K, dtype=np.float64), 1.0],
                  bounds=[(0, None)] * (p + 2 * k), method="highs")
    return float(res.fun)
