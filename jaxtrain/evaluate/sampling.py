"""Autoregressive sampling with temperature and top-k.

Each new token re-runs the model over a fixed-size window (one compiled shape,
no KV cache); cheap at demo scale. A KV-cached decoder is future work.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _next_token_fn(graphdef: nnx.GraphDef, temperature: float, top_k: int):
    @jax.jit
    def next_token(params: Any, tokens_1xL: jax.Array, index: jax.Array, rng: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params)
        logits_V = model(tokens_1xL)[0, index]
        if temperature <= 0:
            return jnp.argmax(logits_V).astype(jnp.int32)
        logits_V = logits_V / temperature
        if 0 < top_k < logits_V.shape[-1]:
            kth = jax.lax.top_k(logits_V, top_k)[0][-1]
            logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
        return jax.random.categorical(rng, logits_V).astype(jnp.int32)

    return next_token


def generate(
    graphdef: nnx.GraphDef,
    params: Any,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    window: int,
    temperature: float = 0.8,
    top_k: int = 40,
    seed: int = 0,
    eos_id: int | None = None,
) -> list[int]:
    next_token = _next_token_fn(graphdef, temperature, top_k)
    ids = list(prompt_ids)
    rng = jax.random.key(seed)
    for _ in range(max_new_tokens):
        context = ids[-window:]
        buf = np.zeros((1, window), dtype=np.int32)
        buf[0, : len(context)] = context
        rng, sub = jax.random.split(rng)
        token = int(next_token(params, jnp.asarray(buf), jnp.asarray(len(context) - 1), sub))
        if eos_id is not None and token == eos_id:
            break
        ids.append(token)
    return ids[len(prompt_ids):]
