"""A checksum of every array of a checkpoint, computed where the array lives.

Two 32-bit sums over each array's words, each word first mixed with its
position and a seed by murmur3's finalizer: any single changed word changes
both sums, a swap is caught, and several changes cancel with probability
2^-64. One jitted reduction over the whole tree runs on the devices that hold the arrays
and brings back 8 bytes per array. The sums are modular, so they do not depend
on how an array is sharded: a resume on another mesh checks the same numbers.
Orbax and TensorStore check neither: a flipped bit in Orbax's zstd-compressed
array data decodes, silently, to other numbers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def leaf_key(path: tuple) -> str:
    """'opt_state/1/0/mu/embed_VxD': the same for a saved tree (dicts) and the run's state (dataclasses)."""
    return "/".join(str(next(getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a))) for k in path)


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def keyed_leaves(tree: Any) -> dict[str, Any]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_array)[0]
    return {leaf_key(path): x for path, x in flat}


def _words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words, in its own shape (a reshape of a sharded array would gather it):
    narrower types widened, wider ones split along a new last axis, booleans as bytes."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32 if size >= 4 else jnp.dtype(f"uint{8 * size}"))
    return bits.astype(jnp.uint32)


def _positions(shape: tuple[int, ...]) -> jax.Array:
    """Each element's row-major index (mod 2^32), built from per-axis iotas: no flattened copy."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return index


_GOLDEN, _M1, _M2 = 0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35  # murmur3's fmix32 constants
_SEEDS = (0x0, 0x5BD1E995)  # two independent sums: 64 bits per array


def _fmix(x: jax.Array) -> jax.Array:
    """murmur3's 32-bit finalizer: a bijection whose output bits each depend on every input bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(_M1)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(_M2)
    return x ^ (x >> 16)


@jax.jit
def _leaf_sums(x: jax.Array) -> jax.Array:
    """Each word mixed with its position and a seed, summed mod 2^32, for two seeds. One changed word changes
    each sum (fmix is a bijection); two changes cancel with probability 2^-32 per sum, wherever they are (a plain
    or position-weighted sum of the raw bits misses two flips of the sign bit)."""
    w = _words(x)
    position = _positions(w.shape) * jnp.uint32(_GOLDEN)
    return jnp.stack([_fmix(w ^ position ^ jnp.uint32(seed)).sum(dtype=jnp.uint32) for seed in _SEEDS])


def checksums(tree: Any) -> dict[str, str]:
    """Leaf key -> 16 hex digits, computed where the arrays live (one small transfer back)."""
    keyed = keyed_leaves(tree)
    # One leaf at a time, each waited for (a jitted function per shape, dtype and sharding): the temporaries of
    # one array at most, where one program over the whole tree held many at once (16 GB on the CPU mesh for
    # GPT-2 small's state), and no two programs' collectives in flight together (the CPU mesh can stall).
    values = np.asarray([np.asarray(_leaf_sums(x)) for x in keyed.values()]).reshape(-1, 2)
    return {k: f"{int(a):08x}{int(b):08x}" for k, (a, b) in zip(keyed, values)}


def mismatch(tree: Any, saved: dict[str, str] | None) -> str | None:
    """Which array's bits differ from the recorded checksums (the first, and how many more), or None; a tree
    saved before checksums existed (none recorded) passes."""
    if saved is None:
        return None
    now = checksums(tree)
    bad = [k for k in now if saved.get(k) != now[k]]
    if not bad:
        return None
    first = bad[0]
    more = f" (and {len(bad) - 1} more arrays)" if len(bad) > 1 else ""
    if first not in saved:
        return f"array {first} has no checksum in meta (meta's list of checksums is damaged){more}"
    return f"array {first} does not match its checksum (saved {saved[first]}, read {now[first]}){more}"
