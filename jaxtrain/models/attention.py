"""Attention implementations, chosen by name; all causal and packed-document aware.

  xla     the reference: materializes the L x L scores. Numerical ground truth.
  jax     `jax.nn.dot_product_attention` with a dense mask (it has no segment ids, so on GPU
          cuDNN declines the mask and XLA runs: kept for comparison, not chosen by auto).
  flash   Pallas (Triton) flash attention on NVIDIA GPUs with segment ids and grouped-query
          heads, no L x L mask (models/flash_gpu.py).
  splash  Pallas splash attention on TPU, native grouped-query (models/splash_tpu.py).
  auto    splash on TPU, flash on NVIDIA GPUs, xla on CPU (and on ROCm, where Triton
          kernels from this module are untested).

The Pallas kernels run on CPU in interpret mode for tests (model.attention_interpret).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxtrain.models import flash_gpu, splash_tpu
from jaxtrain.parallel.constraints import active_mesh_and_rules, logical_to_spec

IMPLEMENTATIONS = ("auto", "xla", "jax", "splash", "flash")


def resolve(name: str, platform: str | None = None) -> str:
    if name != "auto":
        return name
    platform = platform or jax.default_backend()
    return {"tpu": "splash", "gpu": "flash", "cuda": "flash"}.get(platform, "xla")


def attention_mask(segment_ids_BxL: jax.Array) -> jax.Array:
    """BxLxL boolean: causal and within the same packed document."""
    L = segment_ids_BxL.shape[-1]
    causal_LxL = jnp.tril(jnp.ones((L, L), dtype=jnp.bool_))
    same_doc_BxLxL = segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
    return same_doc_BxLxL & causal_LxL[None]


def masked_attention(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, mask_BxLxS) -> jax.Array:
    """Grouped-query attention under an explicit boolean mask (L queries, S keys; H % G == 0).

    Laid out as batched matmuls with (batch, kv-head) leading and the R = H/G
    query heads of a group folded into the row dimension: one [R*L, K] x [K, S]
    matmul per (b, g). XLA's CPU and TPU dot emitters are fastest with batch
    dimensions leading (a 5-D einsum ran at half the speed on CPU).
    """
    B, L, H, K = q_BxLxHxK.shape
    G = k_BxSxGxK.shape[2]
    R = H // G
    q_BxGxRLxK = q_BxLxHxK.reshape(B, L, G, R, K).transpose(0, 2, 3, 1, 4).reshape(B, G, R * L, K)
    k_BxGxSxK = k_BxSxGxK.transpose(0, 2, 1, 3)
    v_BxGxSxK = v_BxSxGxK.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bgqk,bgmk->bgqm", q_BxGxRLxK * (K**-0.5), k_BxGxSxK).astype(jnp.float32)
    mask_Bx1xRLxS = jnp.tile(mask_BxLxS, (1, R, 1))[:, None]
    scores = jnp.where(mask_Bx1xRLxS, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxGxK.dtype)
    out_BxGxRLxK = jnp.einsum("bgqm,bgmk->bgqk", probs, v_BxGxSxK)
    return out_BxGxRLxK.reshape(B, G, R, L, K).transpose(0, 3, 1, 2, 4).reshape(B, L, H, K)


def xla_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL) -> jax.Array:
    """The reference: causal, within packed documents, scores materialized."""
    return masked_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, attention_mask(segment_ids_BxL))


def cached_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cache_k_BxSxGxK, cache_v_BxSxGxK, index, valid_BxS):
    """Decode-time attention: write the new keys/values at `index`, attend to every valid earlier slot."""
    k_all = jax.lax.dynamic_update_slice(cache_k_BxSxGxK, k_BxLxGxK.astype(cache_k_BxSxGxK.dtype), (0, index, 0, 0))
    v_all = jax.lax.dynamic_update_slice(cache_v_BxSxGxK, v_BxLxGxK.astype(cache_v_BxSxGxK.dtype), (0, index, 0, 0))
    L, S = q_BxLxHxK.shape[1], k_all.shape[1]
    query_slot_L = index + jnp.arange(L)
    mask_BxLxS = (jnp.arange(S)[None, None, :] <= query_slot_L[None, :, None]) & valid_BxS[:, None, :]
    return masked_attention(q_BxLxHxK, k_all, v_all, mask_BxLxS), k_all, v_all


def jax_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL) -> jax.Array:
    """`jax.nn.dot_product_attention` with a dense mask: it takes no segment ids, so cuDNN declines and XLA runs."""
    mask_Bx1xLxL = attention_mask(segment_ids_BxL)[:, None]
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, mask=mask_Bx1xLxL)


def check_seq_len(implementation: str, seq_len: int, platform: str | None = None) -> None:
    """Refuse a sequence length the chosen kernel cannot tile (ConfigError naming data.seq_len), before any work.

    With platform None only explicitly named kernels are checked (config load time); `auto`
    is checked once the mesh's platform is known.
    """
    if implementation == "auto" and platform is None:
        return
    impl = resolve(implementation, platform)
    if impl == "splash":
        splash_tpu.block_size_for(seq_len)
    elif impl == "flash":
        flash_gpu.tiles_for(seq_len)


def _sharded(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, *, impl: str, interpret: bool) -> jax.Array:
    """Pallas kernels are not partitioned by XLA: under a mesh they run per shard (batch and heads split)."""
    active = active_mesh_and_rules()
    if impl == "splash":
        if active is None:
            return splash_tpu.splash_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, interpret=interpret)
        mesh, rules = active
        spec = logical_to_spec(("batch", "length", "heads", "head_dim"), rules)
        return splash_tpu.splash_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, mesh=mesh,
                                           batch_axes=spec[0], head_axis=spec[2], interpret=interpret)
    local = functools.partial(flash_gpu.flash_attention, interpret=interpret)
    if active is None:
        return local(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL)
    mesh, rules = active
    qkv_spec = logical_to_spec(("batch", "length", "heads", "head_dim"), rules)
    kv_spec = logical_to_spec(("batch", "length", "kv_heads", "head_dim"), rules)
    return jax.shard_map(
        local, mesh=mesh, in_specs=(qkv_spec, kv_spec, kv_spec, PartitionSpec(qkv_spec[0], None)),
        out_specs=qkv_spec, check_vma=False,
    )(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL)


def dot_product_attention(
    q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, implementation: str = "xla", interpret: bool = False
) -> jax.Array:
    active = active_mesh_and_rules()
    platform = active[0].devices.flat[0].platform if active else None  # AOT: the target, not the host
    impl = resolve(implementation, platform)
    if impl == "xla":
        return xla_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL)
    if impl == "jax":
        return jax_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL)
    if impl in ("splash", "flash"):
        return _sharded(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, impl=impl, interpret=interpret)
    raise ValueError(f"attention implementation {implementation!r}: choose one of {IMPLEMENTATIONS}")

