"""Attention implementations, chosen by name; all causal and packed-document aware.

  xla     the reference: materializes the L x L scores. Numerical ground truth.
  jax     `jax.nn.dot_product_attention`: cuDNN flash attention on NVIDIA GPUs, XLA elsewhere.
  splash  Pallas splash attention (TPU). Runs on CPU in Pallas interpret mode for tests.
  auto    splash on TPU, jax on GPU, xla on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as splash,
)
from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_mask as masks,
)
from jax.sharding import PartitionSpec

from jaxtrain.parallel.constraints import active_mesh_and_rules, logical_to_spec

IMPLEMENTATIONS = ("auto", "xla", "jax", "splash")


def resolve(name: str, platform: str | None = None) -> str:
    if name != "auto":
        return name
    platform = platform or jax.default_backend()
    return {"tpu": "splash", "gpu": "jax", "cuda": "jax", "rocm": "jax"}.get(platform, "xla")


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
    mask_Bx1xLxL = attention_mask(segment_ids_BxL)[:, None]
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, mask=mask_Bx1xLxL)


def _splash_local(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, *, interpret: bool) -> jax.Array:
    """Splash on one device's shard: vmapped over batch, GQA by repeating K/V heads."""
    B, L, H, K = q_BxLxHxK.shape
    G = k_BxLxGxK.shape[2]
    q = jnp.transpose(q_BxLxHxK * (K**-0.5), (0, 2, 1, 3))  # splash does not scale
    k = jnp.repeat(jnp.transpose(k_BxLxGxK, (0, 2, 1, 3)), H // G, axis=1)
    v = jnp.repeat(jnp.transpose(v_BxLxGxK, (0, 2, 1, 3)), H // G, axis=1)
    block = min(512, L)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )
    mask = masks.MultiHeadMask([masks.CausalMask((L, L)) for _ in range(H)])
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    segments = splash.SegmentIds(q=segment_ids_BxL, kv=segment_ids_BxL)
    out_BxHxLxK = jax.vmap(kernel)(q, k, v, segment_ids=segments)
    return jnp.transpose(out_BxHxLxK, (0, 2, 1, 3)).astype(q_BxLxHxK.dtype)


def splash_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, *, interpret: bool = False) -> jax.Array:
    """Pallas kernels are not partitioned by XLA: under a mesh, run per shard with shard_map."""
    local = functools.partial(_splash_local, interpret=interpret)
    active = active_mesh_and_rules()
    if active is None:
        return local(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL)
    mesh, rules = active
    qkv_spec = logical_to_spec(("batch", "length", "heads", "head_dim"), rules)
    kv_spec = logical_to_spec(("batch", "length", "kv_heads", "head_dim"), rules)
    seg_spec = PartitionSpec(qkv_spec[0], None)
    return jax.shard_map(
        local, mesh=mesh, in_specs=(qkv_spec, kv_spec, kv_spec, seg_spec), out_specs=qkv_spec, check_vma=False
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
    if impl == "splash":
        return splash_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, interpret=interpret)
    raise ValueError(f"attention implementation {implementation!r}: choose one of {IMPLEMENTATIONS}")

