"""Rematerialization policies by name (what the backward pass may keep vs recompute).

  none          keep every activation (fastest, most memory)
  full          keep only layer inputs; recompute the whole layer in the backward pass
  save_dots     keep matmul outputs without batch dims (weights x activations); recompute the rest
  offload_dots  like save_dots, but park the saved values in pinned host memory (TPU/GPU)
"""

from __future__ import annotations

from typing import Callable

import jax

POLICIES = ("none", "full", "save_dots", "offload_dots")


def remat_policy(name: str) -> Callable | None:
    """None means: do not wrap the layer in jax.checkpoint at all."""
    if name == "none":
        return None
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "save_dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    if name == "offload_dots":
        return jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host")
    raise ValueError(f"model.remat: {name!r} is not a policy; choose one of {POLICIES}")
