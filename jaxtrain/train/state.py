"""Building a sharded train state without ever holding the unsharded model.

The model is traced under `nnx.eval_shape`; its logical axis names become
NamedShardings through the rules table; `jit(init, out_shardings=...)` then
materializes every parameter and optimizer slot directly in its shard.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxtrain.models.transformer import ModelConfig, Transformer
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.train.guard import init_guard
from jaxtrain.train.step import TrainState


@dataclasses.dataclass
class ModelSpec:
    """What the trainer needs to know about a model: structure, shapes, logical axes."""

    graphdef: nnx.GraphDef
    abstract_params: Any  # pure dict of ShapeDtypeStruct
    logical_axes: Any  # pure dict of axis-name tuples


def model_spec(cfg: ModelConfig) -> ModelSpec:
    abstract_model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract_model, nnx.Param)
    return ModelSpec(graphdef, nnx.to_pure_dict(abstract_state), mesh_lib.logical_axes(abstract_state))


def init_params(cfg: ModelConfig, key: jax.Array) -> Any:
    model = Transformer(cfg, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def state_shardings(spec: ModelSpec, tx: optax.GradientTransformation, mesh: Mesh, rules: dict | None = None) -> TrainState:
    param_sh = mesh_lib.shardings_for(spec.logical_axes, mesh, rules)
    replicated = mesh_lib.replicated(mesh)
    abstract_opt = jax.eval_shape(tx.init, spec.abstract_params)
    # Optimizer slots shaped like the parameters (Adam moments) share their shardings;
    # counters and other scalars are replicated.
    opt_sh = optax.tree_map_params(
        tx, lambda _, sh: sh, abstract_opt, param_sh, transform_non_params=lambda _: replicated
    )
    guard_sh = jax.tree.map(lambda _: replicated, jax.eval_shape(lambda: init_guard(1)))
    return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated, guard=guard_sh)


def init_state(
    cfg: ModelConfig, tx: optax.GradientTransformation, shardings: TrainState, seed: int, guard_window: int = 128
) -> TrainState:
    def init(seed_: jax.Array) -> TrainState:
        params_key, rng_key = jax.random.split(jax.random.key(seed_))
        params = init_params(cfg, params_key)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(rng_key),
            guard=init_guard(guard_window),
        )

    return jax.jit(init, out_shardings=shardings)(jnp.asarray(seed, jnp.int32))


def abstract_state(
    spec: ModelSpec, tx: optax.GradientTransformation, shardings: TrainState, guard_window: int = 128
) -> TrainState:
    shapes = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=spec.abstract_params,
        opt_state=jax.eval_shape(tx.init, spec.abstract_params),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
        guard=jax.eval_shape(lambda: init_guard(guard_window)),
    )
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
