"""Packed-document flash attention for NVIDIA GPUs: the Pallas (Triton) kernels, grouped-query.

JAX's `jax.nn.dot_product_attention` takes no segment ids (its cuDNN path
refuses a dense mask and falls back to XLA, which materializes the L x L
scores), so packed documents need a kernel that reads segment ids itself.
`jax.experimental.pallas.ops.gpu.attention` has one: FlashAttention-2 forward
and backward kernels that mask by causality and segment id tile by tile. Its
`mha` wrapper needs as many key/value heads as query heads, so this module
calls the same kernel bodies through its own `pallas_call`s whose index maps
send query head h to key/value head h // R (R = H / G): no K/V copy per query
head. The backward kernel writes dK/dV per query head (float32) and the R
heads of a group are summed here, in XLA, which is cheap next to the kernel.

Shapes: B batch, L length, H query heads, G key/value heads, K head dim.
Runs on CPU in Pallas interpret mode for tests.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jax.experimental.pallas.ops.gpu import attention as triton_attention

from jaxtrain.errors import ConfigError

# Tiles, from the Triton fused-attention tutorial's Hopper settings (forward 128 x 64; backward
# 64 x 64 for both the dK/dV and the dQ passes): they fit the shared memory of an A100/H100 at
# head dim <= 128. A sequence shorter than a tile, or not a multiple of it, takes the largest
# power of two that divides it (at least MIN_BLOCK, the smallest tile Triton's dot accepts).
FORWARD_BLOCK_Q, FORWARD_BLOCK_K = 128, 64
BACKWARD_BLOCK = 64
MIN_BLOCK = 16


@dataclasses.dataclass(frozen=True)
class Tiles:
    block_q: int
    block_k: int
    block_bwd: int

    @property
    def num_warps(self) -> int:  # the upstream `mha` heuristic: 4 warps for tiles up to 64 x 64, else 8
        return 4 if self.block_q * self.block_k <= 64 * 64 else 8


def _fit(preferred: int, seq_len: int) -> int:
    block = preferred
    while block > MIN_BLOCK and seq_len % block:
        block //= 2
    return block


def tiles_for(seq_len: int) -> Tiles:
    """Tile sizes for a sequence length; ConfigError if no tile divides it."""
    if seq_len % MIN_BLOCK:
        raise ConfigError(
            f"data.seq_len: {seq_len} must be a multiple of {MIN_BLOCK} for model.attention=flash "
            f"(the Pallas GPU kernel tiles the sequence); use a multiple of {MIN_BLOCK} or model.attention=xla."
        )
    return Tiles(_fit(FORWARD_BLOCK_Q, seq_len), _fit(FORWARD_BLOCK_K, seq_len), _fit(BACKWARD_BLOCK, seq_len))


def _forward_call(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, seg_BxL, *, scale: float, tiles: Tiles, interpret: bool):
    B, L, H, K = q_BxLxHxK.shape
    R = H // k_BxLxGxK.shape[2]
    Kp = pl.next_power_of_2(K)
    kernel = functools.partial(triton_attention.mha_forward_kernel, sm_scale=scale, causal=True,
                               block_q=tiles.block_q, block_k=tiles.block_k, head_dim=K)
    q_spec = pl.BlockSpec((None, tiles.block_q, None, Kp), lambda i, b, h: (b, i, h, 0))
    kv_spec = pl.BlockSpec((None, L, None, Kp), lambda i, b, h: (b, 0, h // R, 0))
    out, lse_BxHxL = pl.pallas_call(
        kernel,
        grid=(L // tiles.block_q, B, H),
        in_specs=[q_spec, kv_spec, kv_spec, pl.BlockSpec((None, L), lambda i, b, h: (b, 0))],
        out_specs=[q_spec, pl.BlockSpec((None, None, tiles.block_q), lambda i, b, h: (b, h, i))],
        out_shape=[jax.ShapeDtypeStruct(q_BxLxHxK.shape, q_BxLxHxK.dtype),
                   jax.ShapeDtypeStruct((B, H, L), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=tiles.num_warps, num_stages=2),
        interpret=interpret,
        name="jaxtrain_flash_forward",
    )(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, seg_BxL)
    return out, lse_BxHxL


def _backward_call(q, k, v, seg, out, dout, lse_BxHxL, *, scale: float, tiles: Tiles, interpret: bool):
    B, L, H, K = q.shape
    G = k.shape[2]
    R = H // G
    Kp = pl.next_power_of_2(K)
    # delta = rowsum(O * dO): the upstream code runs a small kernel for it; XLA fuses it as well.
    delta_BxHxL = jnp.einsum("blhk,blhk->bhl", out.astype(jnp.float32), dout.astype(jnp.float32))
    full_q = pl.BlockSpec((None, L, None, Kp), lambda b, h, j: (b, 0, h, 0))
    full_kv = pl.BlockSpec((None, L, None, Kp), lambda b, h, j: (b, 0, h // R, 0))
    per_row = pl.BlockSpec((None, None, L), lambda b, h, j: (b, h, 0))
    tile = pl.BlockSpec((None, tiles.block_bwd, None, Kp), lambda b, h, j: (b, j, h, 0))
    kernel = functools.partial(
        triton_attention.mha_backward_kernel, sm_scale=scale, causal=True, head_dim=K,
        block_q_dkv=tiles.block_bwd, block_kv_dkv=tiles.block_bwd, block_q_dq=tiles.block_bwd,
        block_kv_dq=tiles.block_bwd,
    )
    dq, dk_BxLxHxK, dv_BxLxHxK = pl.pallas_call(
        kernel,
        grid=(B, H, L // tiles.block_bwd),
        in_specs=[full_q, full_kv, full_kv, pl.BlockSpec((None, L), lambda b, h, j: (b, 0)),
                  full_q, full_q, per_row, per_row],
        out_specs=[tile, tile, tile],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((B, L, H, K), jnp.float32),  # per query head: summed per group below
                   jax.ShapeDtypeStruct((B, L, H, K), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=tiles.num_warps, num_stages=2),
        interpret=interpret,
        name="jaxtrain_flash_backward",
    )(q, k, v, seg, out, dout, lse_BxHxL, delta_BxHxL)
    dk = dk_BxLxHxK.reshape(B, L, G, R, K).sum(axis=3).astype(k.dtype)
    dv = dv_BxLxHxK.reshape(B, L, G, R, K).sum(axis=3).astype(v.dtype)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, seg, interpret: bool):
    return _flash_fwd(q, k, v, seg, interpret)[0]


def _flash_fwd(q, k, v, seg, interpret: bool):
    tiles = tiles_for(q.shape[1])
    out, lse = _forward_call(q, k, v, seg, scale=q.shape[-1] ** -0.5, tiles=tiles, interpret=interpret)
    return out, (q, k, v, seg, out, lse)


def _flash_bwd(interpret: bool, residuals, dout):
    q, k, v, seg, out, lse = residuals
    tiles = tiles_for(q.shape[1])
    dq, dk, dv = _backward_call(q, k, v, seg, out, dout, lse, scale=q.shape[-1] ** -0.5, tiles=tiles,
                                interpret=interpret)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, *, interpret: bool = False) -> jax.Array:
    """Causal attention within packed documents on one device's shard (no L x L mask anywhere)."""
    H, G = q_BxLxHxK.shape[2], k_BxLxGxK.shape[2]
    if H % G:
        raise ValueError(f"{H} query heads are not a multiple of {G} key/value heads")
    if q_BxLxHxK.shape[-1] < MIN_BLOCK:
        raise ConfigError(f"model.head_dim: {q_BxLxHxK.shape[-1]} is below {MIN_BLOCK}, the smallest the Pallas GPU "
                          "kernel takes; use model.attention=xla.")
    return _flash(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL.astype(jnp.int32), interpret)
