"""The compiled pieces of a run: a ModelSession (parameters side) and a Trainer (training side).

`ModelSession`: mesh, model spec, parameter and batch shardings, batch
placement and a parameters-only restore; what evaluation, sampling, export
and the lm-eval adapter need, with no optimizer and no train step.
`Trainer`: a ModelSession plus the optimizer, the train-state shardings and
the jitted train step, shared by the training loop and AOT compilation, so
every user sees exactly the same state layout. Evaluation itself lives in
`jaxtrain.evaluate.evaluator`; the loop in `jaxtrain.train.loop`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from etils import epath
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


READ_ATTEMPTS = 3  # a reader's tries for the latest checkpoint while a live trainer's retention deletes old ones


@dataclasses.dataclass
class ModelSession:
    """A run's model on a mesh, parameters only: what eval, sample, export and lm-eval need."""

    cfg: RunConfig
    run: RunDir
    mesh: Mesh
    spec: state_lib.ModelSpec
    param_shardings: Any  # the parameters' NamedShardings, from their logical axes and mesh_lib.RULES
    batch_sharding: NamedSharding

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

    def abstract_params(self) -> Any:
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.spec.abstract_params, self.param_shardings)

    def checkpointer(self, read_only: bool = False) -> ckpt_lib.Checkpointer:
        c = self.cfg.checkpoint
        return ckpt_lib.Checkpointer(self.run, c.keep, c.async_save, c.permanent_every, read_only=read_only)

    def load_params(self, step: int | None = None) -> tuple[Any, int]:
        """A checkpoint's parameters (latest by default), restored into this mesh's shardings; the optimizer
        state is not read."""
        if not self.run.checkpoints.exists():  # checked first: a Checkpointer would create the directory
            raise FileNotFoundError(f"{self.run.checkpoints}: no checkpoints; run `jaxtrain train --run-dir {self.run}` "
                                    "first (or check the run directory's name).")
        for attempt in range(READ_ATTEMPTS):
            reading: list[int] = []
            try:
                return self._read_params(step, reading)
            except Exception as e:
                # A live trainer's retention (checkpoint.keep) deleted a step while we listed or read it.
                gone = _vanished(e) or bool(reading and not (self.run.checkpoints / str(reading[0])).exists())
                if not gone:
                    raise  # damage or a storage error, as it is
                if (step is not None and reading) or attempt == READ_ATTEMPTS - 1:
                    where = f"{self.run.checkpoints}/{reading[0]}" if reading else e.filename
                    raise FileNotFoundError(
                        f"{where}: deleted while being read (a live trainer keeps the latest "
                        f"checkpoint.keep={self.cfg.checkpoint.keep} steps); read a newer step, or keep some for good "
                        "with checkpoint.permanent_every.") from None

    def _read_params(self, step: int | None, reading: list[int]) -> tuple[Any, int]:
        """One try of load_params; the step it reads is appended to `reading`."""
        checkpointer = self.checkpointer(read_only=True)  # a trainer may be saving beside us
        try:
            steps = checkpointer.all_steps()
            chosen = steps[-1] if (step is None and steps) else step
            if chosen is None:
                raise FileNotFoundError(f"{checkpointer.directory}: no checkpoints; run `jaxtrain train` first.")
            if chosen not in steps:
                raise FileNotFoundError(f"{checkpointer.directory}: no checkpoint for step {chosen}; have {steps}.")
            reading.append(chosen)
            return checkpointer.restore_params(chosen, self.abstract_params()), chosen
        finally:
            checkpointer.close()


def _vanished(error: BaseException) -> bool:
    """A file-not-found of a path that is gone now (Orbax lists steps by stat-ing each step's directory)."""
    filename = getattr(error, "filename", None)
    return isinstance(error, FileNotFoundError) and bool(filename) and not epath.Path(filename).exists()


@dataclasses.dataclass
class Trainer(ModelSession):
    """A ModelSession with the optimizer (its learning-rate plan fixed), the train-state shardings and the
    jitted train step. Built once per training invocation, after the checkpoint's plan is known."""

    tx: Any = None
    shardings: TrainState = None
    train_step: Any = None
    lr_plan: optimizer.LrPlan = None

    def abstract_state(self) -> TrainState:
        return state_lib.abstract_state(self.spec, self.tx, self.shardings, self.cfg.train.spike_window)

    def init_state(self) -> TrainState:
        t = self.cfg.train
        return state_lib.init_state(self.cfg.model, self.tx, self.shardings, t.seed, t.spike_window)


def build_mesh(cfg: RunConfig, devices: list | None = None) -> Mesh:
    """The run's mesh, after the checks that need the device count (see parallel.mesh.build_mesh)."""
    mesh = mesh_lib.build_mesh(cfg.mesh, devices, axis_sizes=cfg.model.axis_sizes(),
                               batch_size=cfg.train.batch_size, microbatches=cfg.train.microbatches)
    check_seq_len(cfg.model.attention, cfg.data.seq_len, mesh.devices.flat[0].platform)  # what `auto` resolves to
    return mesh


def build_session(cfg: RunConfig, run_dir: str | RunDir, *, devices: list | None = None,
                  mesh: Mesh | None = None) -> ModelSession:
    """The parameters side of a run on its mesh: no optimizer, no train step."""
    mesh = mesh if mesh is not None else build_mesh(cfg, devices)
    spec = state_lib.model_spec(cfg.model)
    return ModelSession(cfg, RunDir(run_dir), mesh, spec, mesh_lib.shardings_for(spec.logical_axes, mesh),
                        mesh_lib.batch_sharding(mesh))


def build_trainer(cfg: RunConfig, run_dir: str | RunDir, *, devices: list | None = None, mesh: Mesh | None = None,
                  lr_hold: tuple[int, float] | None = None, session: ModelSession | None = None) -> Trainer:
    """The Trainer: from `session` when given (its mesh and model spec are reused), else from scratch."""
    session = session if session is not None else build_session(cfg, run_dir, devices=devices, mesh=mesh)
    tx = optimizer.make_optimizer(cfg.optimizer, cfg.train.steps, lr_hold)
    shardings = state_lib.state_shardings(session.spec, tx, session.mesh)
    t = cfg.train
    loss_fn = make_loss_fn(session.spec.graphdef, session.mesh, mesh_lib.RULES, t.loss_chunk)
    train_step = jax.jit(
        make_train_step(loss_fn, tx, t.z_loss, t.microbatches,
                        GuardConfig(t.spike_zscore, t.spike_window, t.spike_min_history, t.spike_loss_margin,
                                    t.spike_grad_margin, start_step=cfg.optimizer.warmup_steps)),
        in_shardings=(shardings, None),  # the batch arrives as global arrays already placed by to_global
        out_shardings=(shardings, mesh_lib.replicated(session.mesh)),
        donate_argnums=0,
    )
    fields = {f.name: getattr(session, f.name) for f in dataclasses.fields(ModelSession)}
    return Trainer(**fields, tx=tx, shardings=shardings, train_step=train_step,
                   lr_plan=optimizer.plan(cfg.optimizer, cfg.train.steps, lr_hold))


def load_params(cfg: RunConfig, run_dir: str | RunDir, step: int | None = None,
                devices: list | None = None) -> tuple[ModelSession, Any, int]:
    """Restore a checkpoint's parameters (latest by default) onto a fresh mesh; no optimizer is built."""
    session = build_session(cfg, run_dir, devices=devices)
    params, step = session.load_params(step)
    return session, params, step
