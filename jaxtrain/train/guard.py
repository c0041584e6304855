"""The stability guard: skip an update whose loss or gradient norm is not finite or is a real spike.

History: the last `window` finite losses and gradient norms, every one of
them, skipped or not (OLMo-core, Levanter, MaxText: "so spikes can become the
new baseline"). A history of accepted steps only would reject every lasting
change of level again and again.

Spike: robust statistics (median and MAD, scaled to a standard deviation; the
gradient norm in log space, where its swings are symmetric) and a relative
margin as well as a z-score, so that ordinary swings never qualify:

    loss spike      z(loss) > zscore           and  loss > median * (1 + loss_margin)
    gradient spike  z(log g) > zscore          and  g > median * (1 + grad_margin)

The guard waits for `min_history` values after `start_step` (the end of the
learning-rate warm-up, when losses fall fast and gradients swing), and the
training loop empties the history at each mixture-schedule boundary, where a
harder mixture is a change of level, not a spike.

What it does not do: clip adaptively (ZClip-style). Global-norm clipping
(`optimizer.grad_clip`) already bounds every update; an adaptive clip would
change healthy updates by a tuned threshold, while skipping touches only the
rare step that qualifies. A streak of skips is the training loop's business
(rollback).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class GuardConfig:
    """Defaults: REFERENCE (OLMo-core / MaxText / Levanter) for zscore, window and history."""

    zscore: float = struct.field(pytree_node=False, default=6.0)
    window: int = struct.field(pytree_node=False, default=128)
    min_history: int = struct.field(pytree_node=False, default=64)
    loss_margin: float = struct.field(pytree_node=False, default=0.2)  # a spike is > 20% above the median loss
    grad_margin: float = struct.field(pytree_node=False, default=1.0)  # ... or more than twice the median norm
    start_step: int = struct.field(pytree_node=False, default=0)  # the guard judges from here on (warm-up end)


def init_guard(window: int) -> dict:
    return {
        "losses": jnp.zeros((window,), jnp.float32),
        "grad_norms": jnp.zeros((window,), jnp.float32),
        "count": jnp.zeros((), jnp.int32),  # finite values recorded since the history was last emptied
        "skipped": jnp.zeros((), jnp.int32),  # total skipped updates
        "bad_streak": jnp.zeros((), jnp.int32),  # consecutive skipped updates
    }


def reset_history(guard: dict) -> dict:
    """Forget the history (the loop calls it at a mixture-schedule boundary); counters carry on."""
    return {**guard, "count": guard["count"] * 0}


def _masked_median(x: jax.Array, valid: jax.Array) -> jax.Array:
    n = jnp.sum(valid)
    ordered = jnp.sort(jnp.where(valid, x, jnp.inf))
    lo, hi = jnp.maximum((n - 1) // 2, 0), jnp.maximum(n // 2, 0)
    return 0.5 * (ordered[lo] + ordered[hi])


def robust_zscore(x: jax.Array, history: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z, median): z = (x - median) / (1.4826 MAD), the MAD scaled to a normal's standard deviation."""
    median = _masked_median(history, valid)
    mad = _masked_median(jnp.abs(history - median), valid)
    return (x - median) / (1.4826 * mad + 1e-6), median


def judge(guard: dict, step: jax.Array, loss: jax.Array, grad_norm: jax.Array, cfg: GuardConfig) -> tuple:
    """(skip?, loss z-score, gradient-norm z-score) for this step's loss and gradient norm."""
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    valid = jnp.arange(cfg.window) < jnp.minimum(guard["count"], cfg.window)
    z_loss, median_loss = robust_zscore(loss, guard["losses"], valid)
    log_norms = jnp.log(jnp.maximum(guard["grad_norms"], 1e-12))
    z_grad, median_log_norm = robust_zscore(jnp.log(jnp.maximum(grad_norm, 1e-12)), log_norms, valid)
    ready = (step >= cfg.start_step) & (guard["count"] >= cfg.min_history)
    loss_spike = (z_loss > cfg.zscore) & (loss > median_loss * (1 + cfg.loss_margin))
    grad_spike = (z_grad > cfg.zscore) & (grad_norm > jnp.exp(median_log_norm) * (1 + cfg.grad_margin))
    return ~finite | (ready & (loss_spike | grad_spike)), z_loss, z_grad


def record(guard: dict, loss: jax.Array, grad_norm: jax.Array, skipped: jax.Array, window: int) -> dict:
    """Every finite value enters the history, skipped or not; the counters follow the verdict."""
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    slot = guard["count"] % window
    return {
        "losses": jnp.where(finite, guard["losses"].at[slot].set(loss), guard["losses"]),
        "grad_norms": jnp.where(finite, guard["grad_norms"].at[slot].set(grad_norm), guard["grad_norms"]),
        "count": guard["count"] + finite.astype(jnp.int32),
        "skipped": guard["skipped"] + skipped.astype(jnp.int32),
        "bad_streak": jnp.where(skipped, guard["bad_streak"] + 1, 0),
    }
