"""The Trainer: builds the compiled pieces of a run and places batches on the mesh.

Mesh, model spec, optimizer, shardings and the jitted train and eval steps,
shared by the training loop, the evaluator, sampling and AOT compilation, so
all of them see exactly the same state layout. Evaluation itself lives in
`jaxtrain.evaluate.evaluator`; the loop in `jaxtrain.train.loop`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtrain.config import RunConfig
from jaxtrain.data.loader import BATCH_FIELDS
from jaxtrain.models.attention import check_seq_len
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.rundir import RunDir
from jaxtrain.train import checkpoint as ckpt_lib
from jaxtrain.train import state as state_lib
from jaxtrain.train.loss import make_loss_fn
from jaxtrain.train.optimizer import make_optimizer
from jaxtrain.train.step import GuardConfig, TrainState, make_eval_step, make_train_step


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
    eval_step: Any

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

    @property
    def local_batch_size(self) -> int:
        """This process's rows of the global batch."""
        return self.batch_size // jax.process_count()

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def row_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(self.batch_sharding.spec[0]))

    def to_global(self, batch: dict) -> dict:
        """This process's numpy batch -> globally sharded jax.Arrays (rows split like the batch)."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding if v.ndim == 2 else self.row_sharding, v)
            for k, v in batch.items()
        }

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
                  mesh: Mesh | None = None) -> Trainer:
    mesh = mesh if mesh is not None else build_mesh(cfg, devices)
    spec = state_lib.model_spec(cfg.model)
    tx = make_optimizer(cfg.optimizer, cfg.train.steps)
    shardings = state_lib.state_shardings(spec, tx, mesh)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    t = cfg.train
    loss_fn = make_loss_fn(spec.graphdef, mesh, mesh_lib.RULES, t.loss_chunk)
    replicated = mesh_lib.replicated(mesh)
    train_step = jax.jit(
        make_train_step(loss_fn, tx, t.z_loss, t.microbatches,
                        GuardConfig(t.spike_zscore, t.spike_window, t.spike_min_history)),
        in_shardings=(shardings, None),  # the batch arrives as global arrays already placed by to_global
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(make_eval_step(loss_fn), in_shardings=(shardings.params, None), out_shardings=replicated)
    return Trainer(cfg, RunDir(run_dir), mesh, spec, tx, shardings, batch_sharding, train_step, eval_step)


def load_params(cfg: RunConfig, run_dir: str | RunDir, step: int | None = None,
                devices: list | None = None) -> tuple[Trainer, Any, int]:
    """Restore a checkpoint's parameters (latest by default) onto a fresh mesh."""
    trainer = build_trainer(cfg, run_dir, devices=devices)
    params, step = trainer.load_params(step)
    return trainer, params, step
