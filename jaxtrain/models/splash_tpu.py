"""Splash attention (Pallas, TPU) for packed documents: native grouped-query, validated tiles, one kernel per shape.

The kernel (`jax.experimental.pallas.ops.tpu.splash_attention`) takes queries
[H, L, K] and keys/values [G, L, K] with G dividing H and maps each query head
to its key/value head itself, so K/V are never repeated. The causal mask is
static (its block sparsity is computed once on the host when the kernel is
built); packed documents come in as segment ids at run time.

Tiles: the kernel works on blocks of the sequence that must divide L and be
multiples of the TPU's 128 lanes. `block_size_for` picks the largest of
SPLASH_BLOCKS that divides L and `check_seq_len` refuses other lengths before
any work. Kernels are cached per (L, H, tile, head shards, interpret) so a
traced step builds each one once.

Sharding, as MaxText does it: the kernel is built for all H heads with
`head_shards` = the size of the mesh axis that splits heads, its mask
metadata is split with `manual_sharding_spec`, and the kernel itself is an
argument of the `shard_map` (batch over the data axes, heads over tensor).
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtrain.errors import ConfigError

# Largest first. 512 is MaxText's default for every splash block (sa_block_*); smaller tiles only
# when 512 does not divide the sequence. 128 is the floor: the TPU's lane width.
SPLASH_BLOCKS = (512, 256, 128)
LANES = 128


def block_size_for(seq_len: int) -> int:
    if seq_len % LANES:
        raise ConfigError(
            f"data.seq_len: {seq_len} must be a multiple of {LANES} for splash attention on TPU "
            f"(model.attention=splash, or auto on TPU); use a multiple of {LANES} or model.attention=xla."
        )
    return next(b for b in SPLASH_BLOCKS if seq_len % b == 0)


@functools.lru_cache(maxsize=32)
def kernel_for(seq_len: int, num_heads: int, block: int, head_shards: int = 1, interpret: bool = False):
    """The splash kernel for causal attention over L positions and H query heads (built once per shape)."""
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )
    mask = masks.MultiHeadMask([masks.CausalMask((seq_len, seq_len)) for _ in range(num_heads)])
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=head_shards, q_seq_shards=1,
                                  interpret=interpret)


def _apply(kernel, q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL) -> jax.Array:
    """Run a kernel on one shard: heads-major layout, vmapped over the batch."""
    K = q_BxLxHxK.shape[-1]
    q_BxHxLxK = jnp.transpose(q_BxLxHxK * jnp.asarray(K**-0.5, q_BxLxHxK.dtype), (0, 2, 1, 3))  # splash does not scale
    k_BxGxLxK = jnp.transpose(k_BxLxGxK, (0, 2, 1, 3))
    v_BxGxLxK = jnp.transpose(v_BxLxGxK, (0, 2, 1, 3))
    segments = splash.SegmentIds(q=segment_ids_BxL, kv=segment_ids_BxL)
    out_BxHxLxK = jax.vmap(kernel)(q_BxHxLxK, k_BxGxLxK, v_BxGxLxK, segment_ids=segments)
    return jnp.transpose(out_BxHxLxK, (0, 2, 1, 3)).astype(q_BxLxHxK.dtype)


def splash_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, *, mesh: Mesh | None = None,
                     batch_axes=None, head_axis: str | None = None, interpret: bool = False) -> jax.Array:
    """Causal splash attention within packed documents; under a mesh, per shard with heads split over head_axis."""
    B, L, H, _ = q_BxLxHxK.shape
    block = block_size_for(L)
    segment_ids_BxL = segment_ids_BxL.astype(jnp.int32)
    if mesh is None:
        return _apply(kernel_for(L, H, block, 1, interpret), q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL)
    head_shards = mesh.shape[head_axis] if head_axis else 1
    kernel = kernel_for(L, H, block, head_shards, interpret)
    kernel_spec = kernel.manual_sharding_spec(NamedSharding(mesh, PartitionSpec(head_axis, None)))
    qkv_spec = PartitionSpec(batch_axes, None, head_axis, None)
    return jax.shard_map(
        _apply, mesh=mesh,
        in_specs=(kernel_spec, qkv_spec, qkv_spec, qkv_spec, PartitionSpec(batch_axes, None)),
        out_specs=qkv_spec, check_vma=False,
    )(kernel, q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL)
