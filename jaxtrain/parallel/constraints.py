"""Activation sharding constraints by logical axis name.

The model calls `constrain(x, ("batch", "length", "embed"))`; it is a no-op
unless a trainer has entered `activation_sharding(mesh, rules)`. That keeps the
model free of mesh knowledge and usable eagerly in a notebook.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_ACTIVE: contextvars.ContextVar[tuple[Mesh, dict] | None] = contextvars.ContextVar("jaxtrain_sharding", default=None)


def logical_to_spec(axes: Sequence[str | None], rules: dict[str, str | tuple[str, ...] | None]) -> PartitionSpec:
    """Map logical names to mesh axes; a mesh axis is used at most once per array."""
    used: set[str] = set()
    out = []
    for name in axes:
        target = rules.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        targets = tuple(t for t in targets if t not in used)
        used.update(targets)
        out.append(targets[0] if len(targets) == 1 else (targets or None))
    return PartitionSpec(*out)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: dict | None) -> Iterator[None]:
    """`constrain` shards activations on this mesh inside the block; no mesh: the block runs as it is."""
    if mesh is None:
        yield
        return
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_mesh_and_rules() -> tuple[Mesh, dict] | None:
    return _ACTIVE.get()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, rules)))
