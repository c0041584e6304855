"""Batched autoregressive sampling with a key/value cache: temperature, top-k, top-p.

Prompts of different lengths are left-padded into one batch (padding slots
are masked out of attention and positions start at each prompt's first real
token); the prompt is prefilled in one pass, then each new token costs one
single-position step against the cache. Both compiled functions have fixed
shapes, so a whole generation compiles twice at most.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def filter_logits(logits_BxV: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Temperature, then keep the top-k tokens, then the smallest set whose probability reaches top-p."""
    logits_BxV = logits_BxV / temperature
    V = logits_BxV.shape[-1]
    if 0 < top_k < V:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if 0.0 < top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_BxV, axis=-1)
        before_BxV = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better tokens
        cutoff_Bx1 = jnp.min(jnp.where(before_BxV < top_p, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
    return logits_BxV


def _pick(logits_BxV: jax.Array, rng: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    if temperature <= 0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits_BxV, temperature, top_k, top_p)).astype(jnp.int32)


def generate(
    graphdef: nnx.GraphDef,
    params: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
    return_logits: bool = False,
):
    """New tokens for each prompt (cut at EOS); with return_logits, also the float32 logits of each step."""
    B = len(prompts)
    P = max(len(p) for p in prompts)
    S = P + max_new_tokens
    tokens = np.zeros((B, P), np.int32)
    valid = np.zeros((B, P), bool)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = p
        valid[i, P - len(p):] = True
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    lengths = valid.sum(axis=1).astype(np.int32)

    @jax.jit
    def prefill(params, tokens, positions, valid, rng):
        model = nnx.merge(graphdef, params)
        logits, cache = model.decode(tokens, positions, model.init_cache(B, S), valid)
        return _pick(logits[:, -1], rng, temperature, top_k, top_p), logits[:, -1], cache

    @jax.jit
    def step(params, token_B, position_B, cache, rng):
        model = nnx.merge(graphdef, params)
        logits, cache = model.decode(token_B[:, None], position_B[:, None], cache)
        return _pick(logits[:, 0], rng, temperature, top_k, top_p), logits[:, 0], cache

    rng = jax.random.key(seed)
    rng, sub = jax.random.split(rng)
    token, logits, cache = prefill(params, tokens, positions, valid, sub)
    out_tokens, out_logits = [token], [logits]
    for t in range(1, max_new_tokens):
        rng, sub = jax.random.split(rng)
        token, logits, cache = step(params, token, jnp.asarray(lengths + t - 1), cache, sub)
        out_tokens.append(token)
        out_logits.append(logits)
    new_BxT = np.stack([np.asarray(t) for t in out_tokens], axis=1)
    results = []
    for row in new_BxT.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        results.append(row)
    if return_logits:
        return results, np.stack([np.asarray(x) for x in out_logits], axis=1)
    return results
