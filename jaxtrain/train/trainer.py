"""The Trainer: builds the compiled pieces of a run and places batches on the mesh.

Mesh, model spec, optimizer, shardings and the jitted train and eval steps,
shared by the training loop, the evaluator, sampling and AOT compilation, so
all of them see exactly the same state layout. Evaluation itself lives in
`jaxtrain.evaluate.evaluator`; the loop in `jaxtrain.train.loop`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtrain.config import RunConfig
from jaxtrain.data.loader import BATCH_FIELDS
from jaxtrain.models.attention import check_seq_len
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.rundir import RunDir
from jaxtrain.train import checkpoint as ckpt_lib
from jaxtrain.train import optimizer
from jaxtrain.train import state as state_lib
from jaxtrain.train.guard import GuardConfig
from jaxtrain.train.loss import make_loss_fn
from jaxtrain.train.step import TrainState, make_train_step


@dataclasses.dataclass
class Trainer:
    """The compiled pieces of a run, shared by train, eval, sample and AOT compilation."""

    cfg: RunConfig
    run: RunDir
    mesh: Mesh
    spec: state_lib.ModelSpec
    tx: Any
    shardings: TrainState
    batch_sharding: NamedSharding
    train_step: Any
    lr_plan: optimizer.LrPlan

    def with_lr_hold(self, hold: tuple[int, float]) -> "Trainer":
        """The same trainer with its learning-rate schedule continuing from `hold` (a WSD run extended after
        its decay began); the optimizer state's structure is unchanged."""
        return build_trainer(self.cfg, self.run, mesh=self.mesh, lr_hold=hold)

    @property
    def sources(self) -> list[str]:
        return self.cfg.data.source_names

    @property
    def seq_len(self) -> int:
        return self.cfg.data.seq_len

    @property
    def batch_size(self) -> int:
        """Global batch, in sequences."""
        return self.cfg.train.batch_size

    @functools.cached_property
    def rows(self) -> list[int]:
        """The global batch rows this process's devices hold: the rows its data loader builds."""
        return mesh_lib.local_rows(self.batch_sharding, self.batch_size)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def row_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(self.batch_sharding.spec[0]))

    def to_global(self, batch: dict) -> dict:
        """This process's rows (`self.rows`, in order) as numpy -> globally sharded jax.Arrays; each device
        takes its slice of the rows, whichever processes share them."""
        where = {row: i for i, row in enumerate(self.rows)}

        def place(v: np.ndarray) -> jax.Array:
            def shard(index: tuple) -> np.ndarray:
                picked = [where[r] for r in range(*index[0].indices(self.batch_size))]
                return v[picked][(slice(None), *index[1:])]

            sharding = self.batch_sharding if v.ndim == 2 else self.row_sharding
            return jax.make_array_from_callback((self.batch_size, *v.shape[1:]), sharding, shard)

        return {k: place(v) for k, v in batch.items()}

    def place_full_batch(self, batch: dict) -> dict:
        """A batch that every process holds whole (numpy) -> global arrays sharded like training batches."""
        return {k: jax.make_array_from_callback(v.shape, self.batch_sharding if v.ndim == 2 else self.row_sharding,
                                                lambda index, v=v: v[index]) for k, v in batch.items()}

    def abstract_batch(self) -> dict:
        """The global batch as sharded shapes (for AOT compilation)."""
        shape = (self.batch_size, self.seq_len)
        return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sharding) for k, dtype in BATCH_FIELDS.items()}

    def checkpointer(self) -> ckpt_lib.Checkpointer:
        c = self.cfg.checkpoint
        return ckpt_lib.Checkpointer(self.run, c.keep, c.async_save, c.permanent_every)

    def abstract_state(self) -> TrainState:
        return state_lib.abstract_state(self.spec, self.tx, self.shardings, self.cfg.train.spike_window)

    def init_state(self) -> TrainState:
        t = self.cfg.train
        return state_lib.init_state(self.cfg.model, self.tx, self.shardings, t.seed, t.spike_window)

    def load_params(self, step: int | None = None) -> tuple[Any, int]:
        """A checkpoint's parameters (latest by default), restored into this mesh's shardings."""
        checkpointer = self.checkpointer()
        try:
            steps = checkpointer.all_steps()
            step = steps[-1] if (step is None and steps) else step
            if step is None:
                raise FileNotFoundError(f"{checkpointer.directory}: no checkpoints; run `jaxtrain train` first.")
            if step not in steps:
                raise FileNotFoundError(f"{checkpointer.directory}: no checkpoint for step {step}; have {steps}.")
            state, _ = checkpointer.restore(step, self.abstract_state())
        finally:
            checkpointer.close()
        return state.params, step


def build_mesh(cfg: RunConfig, devices: list | None = None) -> Mesh:
    """The run's mesh, after the checks that need the device count (see parallel.mesh.build_mesh)."""
    mesh = mesh_lib.build_mesh(cfg.mesh, devices, axis_sizes=cfg.model.axis_sizes(),
                               batch_size=cfg.train.batch_size, microbatches=cfg.train.microbatches)
    check_seq_len(cfg.model.attention, cfg.data.seq_len, mesh.devices.flat[0].platform)  # what `auto` resolves to
    return mesh


def build_trainer(cfg: RunConfig, run_dir: str | RunDir, *, devices: list | None = None,
                  mesh: Mesh | None = None, lr_hold: tuple[int, float] | None = None) -> Trainer:
    mesh = mesh if mesh is not None else build_mesh(cfg, devices)
    spec = state_lib.model_spec(cfg.model)
    tx = optimizer.make_optimizer(cfg.optimizer, cfg.train.steps, lr_hold)
    shardings = state_lib.state_shardings(spec, tx, mesh)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    t = cfg.train
    loss_fn = make_loss_fn(spec.graphdef, mesh, mesh_lib.RULES, t.loss_chunk)
    replicated = mesh_lib.replicated(mesh)
    train_step = jax.jit(
        make_train_step(loss_fn, tx, t.z_loss, t.microbatches,
                        GuardConfig(t.spike_zscore, t.spike_window, t.spike_min_history, t.spike_loss_margin,
                                    t.spike_grad_margin, start_step=cfg.optimizer.warmup_steps)),
        in_shardings=(shardings, None),  # the batch arrives as global arrays already placed by to_global
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    return Trainer(cfg, RunDir(run_dir), mesh, spec, tx, shardings, batch_sharding, train_step,
                   optimizer.plan(cfg.optimizer, cfg.train.steps, lr_hold))


def load_params(cfg: RunConfig, run_dir: str | RunDir, step: int | None = None,
                devices: list | None = None) -> tuple[Trainer, Any, int]:
    """Restore a checkpoint's parameters (latest by default) onto a fresh mesh."""
    trainer = build_trainer(cfg, run_dir, devices=devices)
    params, step = trainer.load_params(step)
    return trainer, params, step
