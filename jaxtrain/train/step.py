"""The pure train and eval steps.

`train_step(state, batch) -> (state, metrics)` is a pure function of pytrees:
parameters live as a plain dict (`nnx.to_pure_dict` layout) and are merged
into the NNX graph inside the step, so the same state object is what jit
shards, optax updates and Orbax saves.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from jaxtrain.parallel.constraints import activation_sharding
from jaxtrain.train.loss import LossFn

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@struct.dataclass
class GuardConfig:
    """Skip-step on spikes (defaults: OLMo-core / MaxText / Levanter, see REFERENCE)."""

    zscore: float = struct.field(pytree_node=False, default=6.0)
    window: int = struct.field(pytree_node=False, default=128)
    min_history: int = struct.field(pytree_node=False, default=64)


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data: checkpointable, for stochastic layers and sampling
    guard: dict  # rolling loss / grad-norm history and skip counters


def init_guard(window: int) -> dict:
    return {
        "losses": jnp.zeros((window,), jnp.float32),
        "grad_norms": jnp.zeros((window,), jnp.float32),
        "count": jnp.zeros((), jnp.int32),  # accepted steps recorded so far
        "skipped": jnp.zeros((), jnp.int32),  # total skipped updates
        "bad_streak": jnp.zeros((), jnp.int32),  # consecutive skipped updates
    }


def _zscore(x: jax.Array, history: jax.Array, n: jax.Array) -> jax.Array:
    valid = jnp.arange(history.shape[0]) < n
    nf = jnp.maximum(n.astype(jnp.float32), 1.0)
    mean = jnp.sum(jnp.where(valid, history, 0.0)) / nf
    var = jnp.sum(jnp.where(valid, jnp.square(history - mean), 0.0)) / nf
    return (x - mean) / (jnp.sqrt(var) + 1e-6)


def make_forward(graphdef: nnx.GraphDef, mesh: Mesh | None, rules: dict | None) -> Callable:
    """params, batch -> float32 logits, with activation constraints when a mesh is given."""

    def forward(params: Any, batch: Batch) -> jax.Array:
        model = nnx.merge(graphdef, params)
        if mesh is None:
            return model(batch["inputs"], batch["positions"], batch["segment_ids"])
        with activation_sharding(mesh, rules):
            return model(batch["inputs"], batch["positions"], batch["segment_ids"])

    return forward


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    z_loss: float = 0.0,
    microbatches: int = 1,
    guard: GuardConfig | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """One optimizer step, with gradient accumulation and the stability guard.

    With microbatches > 1, gradients are accumulated over slices of the batch;
    slices contribute summed losses and token counts, normalized once at the
    end, so accumulation changes memory, not the update.

    The guard skips the update (parameters and optimizer state unchanged) when
    the loss or gradient norm is not finite, or is a spike: a z-score above
    `guard.zscore` against the last `guard.window` accepted steps, once
    `guard.min_history` exist. Skipped steps do not enter the history.
    A batch may carry `loss_scale` (one float per row, default 1): a test hook
    for injecting spikes and NaNs; the data pipeline never sets it.
    """

    guard = guard or GuardConfig()

    def loss_sum_fn(params: Any, batch: Batch):
        mask = batch["loss_mask"]
        if "loss_scale" in batch:
            mask = mask * batch["loss_scale"][:, None]
        loss_sum, _ = loss_fn(params, batch, mask, z_loss)
        return loss_sum, jnp.sum(batch["loss_mask"])

    grad_fn = jax.value_and_grad(loss_sum_fn, has_aux=True)

    def accumulate(params: Any, batch: Batch):
        if microbatches == 1:
            return grad_fn(params, batch)
        # Row r of the batch goes to microbatch r % M: every data-parallel shard keeps
        # an equal share of each microbatch, so the split moves no data between devices.
        def split(x):
            return jnp.swapaxes(x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]), 0, 1)

        micro = jax.tree.map(split, batch)

        def body(carry, mb):
            (loss_acc, count_acc), grads_acc = carry
            (loss, count), grads = grad_fn(params, mb)
            return ((loss_acc + loss, count_acc + count), jax.tree.map(jnp.add, grads_acc, grads)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (sums, grads), _ = jax.lax.scan(body, ((0.0, 0.0), zeros), micro)
        return sums, grads

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        (loss_sum, count), grads = accumulate(state.params, batch)
        denom = jnp.maximum(count, 1.0)
        loss = loss_sum / denom
        grads = jax.tree.map(lambda g: g / denom, grads)
        grad_norm = optax.tree.norm(grads)

        g = state.guard
        n = jnp.minimum(g["count"], guard.window)
        z_loss_score = _zscore(loss, g["losses"], n)
        z_grad_score = _zscore(grad_norm, g["grad_norms"], n)
        spike = (g["count"] >= guard.min_history) & ((z_loss_score > guard.zscore) | (z_grad_score > guard.zscore))
        bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm)) | spike

        safe_grads = jax.tree.map(lambda x: jnp.where(bad, jnp.zeros_like(x), x), grads)  # no NaN into Adam
        updates, opt_state = tx.update(safe_grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(bad, b, a), new, old)  # noqa: E731
        slot = g["count"] % guard.window
        guard_state = {
            "losses": jnp.where(bad, g["losses"], g["losses"].at[slot].set(loss)),
            "grad_norms": jnp.where(bad, g["grad_norms"], g["grad_norms"].at[slot].set(grad_norm)),
            "count": g["count"] + jnp.where(bad, 0, 1),
            "skipped": g["skipped"] + bad.astype(jnp.int32),
            "bad_streak": jnp.where(bad, g["bad_streak"] + 1, 0),
        }
        new_state = TrainState(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            rng=state.rng,
            guard=guard_state,
        )
        metrics = {
            "loss": loss, "grad_norm": grad_norm, "tokens": count, "skipped": bad,
            "loss_zscore": z_loss_score, "grad_norm_zscore": z_grad_score,
            "skipped_total": guard_state["skipped"], "bad_streak": guard_state["bad_streak"],
        }
        return new_state, metrics

    return train_step


def make_eval_step(loss_fn: LossFn) -> Callable[[Any, Batch], Metrics]:
    def eval_step(params: Any, batch: Batch) -> Metrics:
        loss_sum, count = loss_fn(params, batch, batch["loss_mask"], 0.0)
        return {"loss_sum": loss_sum, "tokens": count}

    return eval_step
