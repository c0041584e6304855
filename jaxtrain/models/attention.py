"""Attention kernels. All take packed-document segment ids and are causal.

The XLA reference materializes the L x L scores; it is the numerical ground
truth that faster kernels are checked against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(segment_ids_BxL: jax.Array) -> jax.Array:
    """BxLxL boolean: causal and within the same packed document."""
    L = segment_ids_BxL.shape[-1]
    causal_LxL = jnp.tril(jnp.ones((L, L), dtype=jnp.bool_))
    same_doc_BxLxL = segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
    return same_doc_BxLxL & causal_LxL[None]


def dot_product_attention(
    q_BxLxHxK: jax.Array, k_BxLxGxK: jax.Array, v_BxLxGxK: jax.Array, segment_ids_BxL: jax.Array
) -> jax.Array:
    """Grouped-query attention: H query heads share G key/value heads (H % G == 0)."""
    B, L, H, K = q_BxLxHxK.shape
    G = k_BxLxGxK.shape[2]
    q_BxLxGxRxK = q_BxLxHxK.reshape(B, L, G, H // G, K)
    scores = jnp.einsum("blgrk,bmgk->bgrlm", q_BxLxGxRxK, k_BxLxGxK).astype(jnp.float32)
    scores = scores * (K ** -0.5)
    mask_Bx1x1xLxL = attention_mask(segment_ids_BxL)[:, None, None]
    scores = jnp.where(mask_Bx1x1xLxL, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BxLxGxK.dtype)
    out = jnp.einsum("bgrlm,bmgk->blgrk", probs, v_BxLxGxK)
    return out.reshape(B, L, H, K)
