"""A run's compiled pieces: mesh, model spec, optimizer, shardings, jitted steps.

Shared by training, evaluation, sampling and AOT compilation, so all of them
see exactly the same state layout.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
from etils import epath
from jax.sharding import Mesh, NamedSharding

from jaxtrain.config import RunConfig, validate
from jaxtrain.data import prepare
from jaxtrain.evaluate import evaluation
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.train import checkpoint as ckpt_lib
from jaxtrain.train import state as state_lib
from jaxtrain.train.optimizer import make_optimizer
from jaxtrain.train.step import GuardConfig, TrainState, make_eval_step, make_forward, make_train_step


@dataclasses.dataclass
class Session:
    """The compiled pieces of a run, shared by train, eval and sample."""

    cfg: RunConfig
    run_dir: pathlib.Path
    mesh: Mesh
    spec: state_lib.ModelSpec
    tx: Any
    shardings: TrainState
    batch_sharding: NamedSharding
    train_step: Any
    eval_step: Any
    _scorer: Any = None
    _sp: Any = None

    @property
    def sources(self) -> list[str]:
        return [s.name for s in self.cfg.data.sources]

    def to_global(self, batch: dict) -> dict:
        """This process's numpy batch -> globally sharded jax.Arrays (rows split like the batch)."""
        return {
            k: jax.make_array_from_process_local_data(
                self.batch_sharding if v.ndim == 2 else self.row_sharding, v
            )
            for k, v in batch.items()
        }

    @property
    def row_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, jax.sharding.PartitionSpec(self.batch_sharding.spec[0]))

    def checkpointer(self) -> ckpt_lib.Checkpointer:
        c = self.cfg.checkpoint
        return ckpt_lib.Checkpointer(self.run_dir / "checkpoints", c.keep, c.async_save, c.permanent_every)

    def abstract_state(self) -> TrainState:
        return state_lib.abstract_state(self.spec, self.tx, self.shardings, self.cfg.train.spike_window)

    def init_state(self) -> TrainState:
        t = self.cfg.train
        return state_lib.init_state(self.cfg.model, self.tx, self.shardings, t.seed, t.spike_window)

    def unigram_baseline(self) -> float:
        """Cross-entropy of train-split unigram frequencies on the eval tokens: the bar to clear."""
        return evaluation.unigram_baseline(
            prepare.tfds_dir(self.run_dir),
            self.sources,
            self.cfg.model.vocab_size,
            seq_len=self.cfg.data.seq_len,
            batch_size=self.cfg.train.batch_size,
            max_batches=self.cfg.eval.max_batches,
        )

    def evaluate(self, params: Any) -> dict[str, float]:
        """Held-out loss / perplexity / bits per byte per source, plus the downstream tasks."""
        results = self._evaluate_loss(params)
        if self.cfg.eval.tasks and jax.process_count() == 1:
            results.update(self.evaluate_tasks(params))
        return results

    def evaluate_tasks(self, params: Any) -> dict[str, float]:
        from jaxtrain.data import tokenizer as tok
        from jaxtrain.evaluate import tasks

        if self._scorer is None:
            forward = make_forward(self.spec.graphdef, None, None)
            self._scorer = tasks.make_scorer(forward, self.cfg.data.seq_len, self.cfg.train.batch_size)
            self._sp = tok.load(prepare.tokenizer_path(self.run_dir))
        paths = [prepare.tasks_dir(self.run_dir) / f"{name}.jsonl" for name in tasks.BUILTIN_TASKS]
        paths += [pathlib.Path(p) for p in self.cfg.eval.task_files]
        results = {}
        for path in paths:
            if not path.exists():
                continue
            scores = tasks.evaluate_task(self._scorer, params, self._sp, tasks.read_task(path))
            results[f"tasks/{path.stem}/acc"] = scores["acc"]
            results[f"tasks/{path.stem}/acc_norm"] = scores["acc_norm"]
        return results

    def _evaluate_loss(self, params: Any) -> dict[str, float]:
        return evaluation.evaluate(
            self.eval_step,
            params,
            prepare.tfds_dir(self.run_dir),
            self.sources,
            seq_len=self.cfg.data.seq_len,
            batch_size=self.cfg.train.batch_size // jax.process_count(),
            max_batches=self.cfg.eval.max_batches,
            to_global=self.to_global,
        )


def build_session(cfg: RunConfig, run_dir: pathlib.Path, devices: list | None = None) -> Session:
    devices = list(devices if devices is not None else jax.devices())
    validate(cfg, num_devices=len(devices))
    mesh = mesh_lib.make_mesh(cfg.mesh.shape(), devices)
    spec = state_lib.model_spec(cfg.model)
    tx = make_optimizer(cfg.optimizer, cfg.train.steps)
    shardings = state_lib.state_shardings(spec, tx, mesh)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    forward = make_forward(spec.graphdef, mesh, mesh_lib.RULES)
    replicated = mesh_lib.replicated(mesh)
    train_step = jax.jit(
        make_train_step(
            forward,
            tx,
            cfg.train.z_loss,
            cfg.train.microbatches,
            GuardConfig(cfg.train.spike_zscore, cfg.train.spike_window, cfg.train.spike_min_history),
        ),
        in_shardings=(shardings, None),  # the batch arrives as global arrays already placed by to_global
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(make_eval_step(forward), in_shardings=(shardings.params, None), out_shardings=replicated)
    return Session(cfg, epath.Path(run_dir), mesh, spec, tx, shardings, batch_sharding, train_step, eval_step)
