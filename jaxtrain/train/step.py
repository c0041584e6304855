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
from jaxtrain.train import guard as guard_lib
from jaxtrain.train.loss import Batch, LossFn

Metrics = dict[str, jax.Array]


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data: checkpointable, for stochastic layers and sampling
    guard: dict  # rolling loss / grad-norm history and skip counters


def batch_checksum(batch: Batch) -> jax.Array:
    """A uint32 fingerprint of the global batch (which tokens sit in which row and position): equal on any
    mesh and any number of processes exactly when the batches are equal. Logged to check data loading."""
    inputs_BxL = batch["inputs"].astype(jnp.uint32) + 7919 * batch["segment_ids"].astype(jnp.uint32)
    B, L = inputs_BxL.shape
    weights_BxL = (jnp.arange(B * L, dtype=jnp.uint32).reshape(B, L) * jnp.uint32(2654435761)) | jnp.uint32(1)
    return jnp.sum(inputs_BxL * weights_BxL, dtype=jnp.uint32)


def make_forward(graphdef: nnx.GraphDef, mesh: Mesh | None, rules: dict | None) -> Callable:
    """params, batch -> float32 logits, with activation constraints when a mesh is given."""

    def forward(params: Any, batch: Batch) -> jax.Array:
        model = nnx.merge(graphdef, params)
        with activation_sharding(mesh, rules):
            return model(batch["inputs"], batch["positions"], batch["segment_ids"])

    return forward


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    z_loss: float = 0.0,
    microbatches: int = 1,
    guard: guard_lib.GuardConfig | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """One optimizer step, with gradient accumulation and the stability guard.

    With microbatches > 1, gradients are accumulated over slices of the batch;
    slices contribute summed losses and token counts, normalized once at the
    end, so accumulation changes memory, not the update.

    The guard (train/guard.py) skips the update (parameters and optimizer
    state unchanged) when the loss or gradient norm is not finite or is a
    spike against the history of recent steps. A batch may carry `loss_scale` (one float per row, default 1): a test hook
    for injecting spikes and NaNs; the data pipeline never sets it.
    """

    guard = guard or guard_lib.GuardConfig()

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

        bad, z_loss_score, z_grad_score = guard_lib.judge(state.guard, state.step, loss, grad_norm, guard)
        safe_grads = jax.tree.map(lambda x: jnp.where(bad, jnp.zeros_like(x), x), grads)  # no NaN into Adam
        updates, opt_state = tx.update(safe_grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(bad, b, a), new, old)  # noqa: E731
        guard_state = guard_lib.record(state.guard, loss, grad_norm, bad, guard.window)
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
            "batch_checksum": batch_checksum(batch),
        }
        return new_state, metrics

    return train_step


def make_eval_step(loss_fn: LossFn, eos_id: int | None = None) -> Callable[[Any, Batch], Metrics]:
    """Summed loss and tokens; with eos_id, also the loss and tokens of the text alone (targets other than
    the end-of-document token): what bits per byte divide by the text's bytes."""

    def eval_step(params: Any, batch: Batch) -> Metrics:
        if eos_id is None:
            loss_sum, count = loss_fn(params, batch, batch["loss_mask"], 0.0)
            return {"loss_sum": loss_sum, "tokens": count}
        text_mask = batch["loss_mask"] * (batch["targets"] != eos_id)
        sums, counts = loss_fn(params, batch, jnp.stack([batch["loss_mask"], text_mask]), 0.0)  # one forward pass
        return {"loss_sum": sums[0], "tokens": counts[0], "text_loss_sum": sums[1], "text_tokens": counts[1]}

    return eval_step
