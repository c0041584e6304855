"""Token cross-entropy, computed in chunks of the sequence so the [B, L, V] float32 logits never exist.

For a 128k vocabulary the logits dwarf every other activation (llama-1b at
64 x 2048 on 8 chips: 8.4 GB per chip in float32, and as much again for their
gradient). `chunked_cross_entropy` scans over slices of `chunk` positions:
each slice projects its hidden states through the head, reduces to a loss sum
and is thrown away; under `jax.checkpoint` the backward pass recomputes a
slice's logits instead of keeping them, so at most one slice of logits (and
its gradient) is alive. The sums, and so the gradients, are those of the
whole-sequence computation (tested); only the order of the additions differs.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxtrain.models.transformer import project_logits
from jaxtrain.parallel.constraints import activation_sharding

Batch = dict[str, jax.Array]
# (params, batch, mask_BxL, z_loss) -> (sum of masked token losses, sum of the mask)
LossFn = Callable[[Any, Batch, jax.Array, float], tuple[jax.Array, jax.Array]]


def cross_entropy(
    logits_BxLxV: jax.Array, targets_BxL: jax.Array, mask_BxL: jax.Array, z_loss: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Sum of masked token losses (with optional PaLM z-loss) and the token count. A mask with a leading
    axis ([K, B, L]) gives K sums from one computation of the logits."""
    logz_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
    target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    nll_BxL = logz_BxL - target_logit_BxL
    if z_loss:
        nll_BxL = nll_BxL + z_loss * jnp.square(logz_BxL)
    mask = mask_BxL.astype(jnp.float32)
    return jnp.sum(nll_BxL * mask, axis=(-2, -1)), jnp.sum(mask, axis=(-2, -1))


def chunked_cross_entropy(
    hidden_BxLxD: jax.Array, head_DxV: jax.Array, targets_BxL: jax.Array, mask_BxL: jax.Array,
    z_loss: float = 0.0, chunk: int = 256,
) -> tuple[jax.Array, jax.Array]:
    """`cross_entropy(project_logits(hidden, head), ...)` without the whole logits array; chunk <= 0: whole."""
    B, L, D = hidden_BxLxD.shape
    if chunk <= 0 or chunk >= L:
        return cross_entropy(project_logits(hidden_BxLxD, head_DxV), targets_BxL, mask_BxL, z_loss)
    n = -(-L // chunk)
    pad = n * chunk - L  # padded positions carry mask 0: they add nothing to either sum
    if pad:
        hidden_BxLxD = jnp.pad(hidden_BxLxD, ((0, 0), (0, pad), (0, 0)))
        targets_BxL = jnp.pad(targets_BxL, ((0, 0), (0, pad)))
        mask_BxL = jnp.pad(mask_BxL, [(0, 0)] * (mask_BxL.ndim - 1) + [(0, pad)])
    h_NxBxCxD = jnp.swapaxes(hidden_BxLxD.reshape(B, n, chunk, D), 0, 1)
    t_NxBxC = jnp.swapaxes(targets_BxL.reshape(B, n, chunk), 0, 1)
    m_Nx_BxC = jnp.moveaxis(mask_BxL.reshape(*mask_BxL.shape[:-1], n, chunk), -2, 0)  # [N, (K,) B, C]

    @jax.checkpoint  # keep only the slice's inputs; its logits are recomputed in the backward pass
    def slice_loss(h_BxCxD, t_BxC, m_BxC):
        return cross_entropy(project_logits(h_BxCxD, head_DxV), t_BxC, m_BxC, z_loss)

    def body(carry, xs):
        loss_sum, count = slice_loss(*xs)
        return (carry[0] + loss_sum, carry[1] + count), None

    zero = jnp.zeros(mask_BxL.shape[:-2], jnp.float32)
    (loss_sum, count), _ = jax.lax.scan(body, (zero, zero), (h_NxBxCxD, t_NxBxC, m_Nx_BxC))
    return loss_sum, count


def make_loss_fn(graphdef: nnx.GraphDef, mesh: Mesh | None, rules: dict | None, chunk: int = 256) -> LossFn:
    """params, batch, mask, z_loss -> (loss sum, token count), with activation constraints when a mesh is given."""

    def loss_fn(params: Any, batch: Batch, mask_BxL: jax.Array, z_loss: float = 0.0):
        model = nnx.merge(graphdef, params)

        with activation_sharding(mesh, rules):
            hidden_BxLxD = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
            return chunked_cross_entropy(hidden_BxLxD, model.head_weight(), batch["targets"], mask_BxL, z_loss, chunk)

    return loss_fn
