"""Mesh construction and parameter shardings from logical axis names.

`RULES` is the one table mapping logical names to mesh axes. Batch is split
over every data-like axis; FSDP shards the embedding dimension of weights (and
the batch); tensor parallelism splits heads, MLP width and vocabulary. `dcn`
is data parallelism across TPU slices (multislice): only gradients cross the
slower data-center network, once per step.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtrain.errors import ConfigError, check
from jaxtrain.parallel.constraints import logical_to_spec
from jaxtrain.utils import log

MESH_AXES = ("dcn", "data", "fsdp", "tensor")

RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("dcn", "data", "fsdp"),
    "length": None,
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "vocab": "tensor",
    "norm": None,
    "layers": None,
}


# What to suggest when a sharded dimension does not divide its mesh axis.
_DIVISIBILITY_FIX = {
    "heads": "pick a tensor size that divides the heads",
    "kv_heads": "use a tensor size that divides the key/value heads (or more model.num_kv_heads)",
    "vocab": "pad the vocabulary (e.g. model.vocab_size={padded}) or use mesh.tensor=1",
    "embed": "use an fsdp size that divides the width",
    "mlp": "use a tensor size that divides the MLP width",
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; one may be -1 to take the remaining devices."""

    dcn: int = 1  # data parallel across slices (multislice)
    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        for axis, size in self.shape().items():
            check(size == -1 or size > 0, f"mesh.{axis}: must be positive or -1 (fill), got {size}.")
        fill = [axis for axis, size in self.shape().items() if size == -1]
        check(len(fill) <= 1, f"mesh: only one axis may be -1, got {fill}; set the others explicitly.")

    def shape(self) -> dict[str, int]:
        return {"dcn": self.dcn, "data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}


def check_divisible(shape: dict[str, int], axis_sizes: dict[str, tuple[int, str]], rules: dict | None = None) -> None:
    """Every parameter dimension sharded over a mesh axis must divide evenly (axes still -1 are skipped).

    axis_sizes: logical axis -> (size, config key), e.g. ModelConfig.axis_sizes()."""
    rules = RULES if rules is None else rules
    for logical, (size, key) in axis_sizes.items():
        target = rules.get(logical)
        for axis in (target,) if isinstance(target, str) else tuple(target or ()):
            n = shape.get(axis, 1)
            fix = _DIVISIBILITY_FIX.get(logical, "change the mesh").format(padded=-(-size // 128) * 128)
            check(n <= 0 or size % n == 0, f"mesh.{axis}: {n} must divide {key}={size}; {fix}.")


def check_batch(shape: dict[str, int], batch_size: int, microbatches: int) -> None:
    """The global batch splits evenly over the data-parallel axes, and each replica's share over microbatches."""
    dp = shape["dcn"] * shape["data"] * shape["fsdp"]
    check(
        batch_size % dp == 0,
        f"train.batch_size: {batch_size} is not divisible by the data-parallel size "
        f"{dp} (mesh.dcn={shape['dcn']} x mesh.data={shape['data']} x mesh.fsdp={shape['fsdp']}); "
        f"use a multiple of {dp}.",
    )
    check(
        (batch_size // dp) % microbatches == 0,
        f"train.microbatches: {microbatches} must divide the per-replica batch {batch_size // dp}.",
    )


class MeshError(ConfigError):
    """The mesh does not fit the devices."""


def resolve_mesh_shape(shape: dict[str, int], num_devices: int) -> dict[str, int]:
    """Fill one -1 axis so the product equals the device count, or explain the mismatch."""
    fill = [name for name, size in shape.items() if size == -1]
    if len(fill) > 1:
        raise MeshError(f"mesh: only one axis may be -1, got {fill}; set the others explicitly.")
    fixed = math.prod(size for size in shape.values() if size != -1)
    if fill:
        if num_devices % fixed:
            raise MeshError(
                f"mesh: fixed axes {shape} multiply to {fixed}, which does not divide the "
                f"{num_devices} available devices; change mesh.* so the product divides {num_devices}."
            )
        shape = {**shape, fill[0]: num_devices // fixed}
    elif fixed != num_devices:
        raise MeshError(
            f"mesh: {shape} needs {fixed} devices but {num_devices} are available; "
            f"set one axis to -1 (e.g. mesh.data=-1) or make the product {num_devices}."
        )
    return shape


def build_mesh(
    cfg: MeshConfig,
    devices: Sequence[jax.Device] | None = None,
    *,
    axis_sizes: dict[str, tuple[int, str]] | None = None,
    batch_size: int | None = None,
    microbatches: int = 1,
) -> Mesh:
    """The device mesh, after the checks that need the device count: the shape fills the devices,
    sharded parameter dimensions divide their axes, and the batch divides the data-parallel size.
    Run once per process, before any work (the pipeline builds the mesh first)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(cfg.shape(), len(devices))
    if axis_sizes is not None:
        check_divisible(shape, axis_sizes)
    if batch_size is not None:
        check_batch(shape, batch_size, microbatches)
    return make_mesh(shape, devices)


# On CPU there is no physical topology: devices are laid out in process-major order, or with
# JAXTRAIN_CPU_DEVICE_ORDER=interleaved round-robin over processes, which makes the innermost mesh axes span
# processes the way create_device_mesh splits a TPU pod's axes over hosts (tests simulate pods with it).
CPU_DEVICE_ORDER_ENV = "JAXTRAIN_CPU_DEVICE_ORDER"


def _cpu_order(devices: list) -> list:
    order = os.environ.get(CPU_DEVICE_ORDER_ENV, "process")
    if order not in ("process", "interleaved"):
        raise ConfigError(f"{CPU_DEVICE_ORDER_ENV}={order!r}: use 'process' or 'interleaved'.")
    by_process = sorted(devices, key=lambda d: (d.process_index, d.id))
    if order == "process":
        return by_process
    local = {}
    for d in by_process:
        local.setdefault(d.process_index, []).append(d)
    return [d for group in zip(*local.values()) for d in group]


def make_mesh(shape: dict[str, int], devices: Sequence[jax.Device] | None = None, *, quiet: bool = False) -> Mesh:
    """Topology-aware on TPU and GPU (create_device_mesh, or create_hybrid_device_mesh across slices; physical
    axes are split only when the shape needs it); a plain reshape only on CPU. The log says which."""
    devices = list(devices if devices is not None else jax.devices())
    resolved = resolve_mesh_shape({a: shape.get(a, 1) for a in MESH_AXES}, len(devices))
    dims = tuple(resolved[a] for a in MESH_AXES)
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    platform = devices[0].platform
    if platform == "cpu":
        grid = np.asarray(_cpu_order(devices)).reshape(dims)
        how = f"plain reshape ({os.environ.get(CPU_DEVICE_ORDER_ENV, 'process')} order; CPU devices have no topology)"
    elif num_slices > 1:
        if resolved["dcn"] != num_slices:
            raise MeshError(f"mesh.dcn: {resolved['dcn']} but the devices span {num_slices} slices; set mesh.dcn={num_slices}.")
        ici, dcn = (1, *dims[1:]), (num_slices, 1, 1, 1)
        grid, split = _topology_aware(lambda split: mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices=devices, allow_split_physical_axes=split))
        how = f"create_hybrid_device_mesh over {num_slices} slices (topology-aware{split})"
    else:
        grid, split = _topology_aware(lambda split: mesh_utils.create_device_mesh(
            dims, devices=devices, allow_split_physical_axes=split))
        how = f"create_device_mesh (topology-aware{split})"
    if not quiet:
        log(f"[mesh] {dict(resolved)} on {len(devices)} {devices[0].device_kind} devices: {how}")
    return Mesh(grid, MESH_AXES)


def _topology_aware(create) -> tuple[np.ndarray, str]:
    """Keep physical axes whole when the shape allows it (fastest collectives), else split them (the mesh
    still follows the topology); never fall back to device order."""
    try:
        return create(False), ""
    except (ValueError, NotImplementedError, AssertionError):
        return create(True), ", physical axes split to fit the shape"


def logical_axes(state: nnx.State) -> dict:
    """Pure-dict tree (same structure as `nnx.to_pure_dict`) of each parameter's logical axes."""
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata().get("logical_axes")
        axes = tuple(axes) if axes is not None else (None,) * len(var.shape)
        if len(axes) == len(var.shape) - 1:  # stacked layers (nnx.vmap) add a leading axis
            axes = ("layers", *axes)
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = axes
    return out


def shardings_for(axes_tree: Any, mesh: Mesh, rules: dict | None = None) -> Any:
    rules = RULES if rules is None else rules
    return jax.tree.map(
        lambda axes: NamedSharding(mesh, logical_to_spec(axes, rules)),
        axes_tree,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def batch_sharding(mesh: Mesh, rules: dict | None = None) -> NamedSharding:
    rules = RULES if rules is None else rules
    return NamedSharding(mesh, logical_to_spec(("batch", "length"), rules))


def local_rows(sharding: NamedSharding, global_batch: int) -> list[int]:
    """Rows of the global batch held by this process's devices, sorted (devices may share rows, and so may
    processes when a non-batch axis spans hosts: they then load the same rows)."""
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map((global_batch, 1)).values():
        rows.update(range(*index[0].indices(global_batch)))
    return sorted(rows)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
