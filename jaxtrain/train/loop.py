"""The training loop: resume, then step, and after each step ask: log? stop? eval? save?

Everything stateful lives in the run directory; calling `train` again on the
same directory continues from the latest valid checkpoint with the same data
order. SIGTERM/SIGINT save the current step and raise `Preempted`; repeated
bad steps roll back to the last checkpoint and skip the offending data.
Evaluation is a hook of (params, step): `jaxtrain.pipeline` passes an
`Evaluator`, and this package never imports `jaxtrain.evaluate`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import numpy as np

from jaxtrain import runconfig, runlock
from jaxtrain.config import RunConfig, to_dict
from jaxtrain.data import loader, shards
from jaxtrain.data import tokenizer as tok
from jaxtrain.rundir import RunDir
from jaxtrain.scaling import flops
from jaxtrain.train import guard as guard_lib
from jaxtrain.train import optimizer, resume
from jaxtrain.train.checkpoint import Checkpointer, checkpoint_meta
from jaxtrain.train.meters import MixtureMeter, Throughput
from jaxtrain.train.metrics import MetricsWriter, device_memory_gib
from jaxtrain.train.preemption import Preempted, PreemptionWatcher
from jaxtrain.train.profiler import StepProfiler
from jaxtrain.train.resume import TrainingDiverged
from jaxtrain.train.trainer import ModelSession, Trainer, build_session, build_trainer
from jaxtrain.utils import format_duration, log

__all__ = ["EvalHook", "FaultInjector", "TrainingDiverged", "run", "train"]

# A test hook: index of the batch drawn from the data iterator (0, 1, ...; it never rewinds) -> loss
# scale for that batch (None: untouched). Models bad data: used to inject spikes and NaNs. Only a run
# given one adds the `loss_scale` field to its batches (and so to its compiled step).
FaultInjector = Callable[[int], float | None]
# (params, step) -> eval results; the hook logs and records them itself (jaxtrain.evaluate.Evaluator).
EvalHook = Callable[[Any, int], dict[str, float]]


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def train(cfg: RunConfig, run_dir: str | RunDir, *, evaluate: EvalHook | None = None,
          metrics: MetricsWriter | None = None, max_steps_this_run: int | None = None, devices: list | None = None,
          fault_injector: FaultInjector | None = None) -> dict:
    """Train to cfg.train.steps (or stop after max_steps_this_run, as an interruption would)."""
    runconfig.check(cfg, run_dir)  # the recorded data and tokenizer, if training already started on them
    with runlock.writer(run_dir, primary=jax.process_index() == 0):
        return run(build_session(cfg, run_dir, devices=devices), evaluate=evaluate, metrics=metrics,
                   max_steps_this_run=max_steps_this_run, fault_injector=fault_injector)


def run(session: ModelSession, *, evaluate: EvalHook | None = None, metrics: MetricsWriter | None = None,
        max_steps_this_run: int | None = None, fault_injector: FaultInjector | None = None) -> dict:
    """Resume (or start) the run of `session` and train; returns step, state, last eval, trainer, rollbacks.

    The Trainer is built once, after the checkpoint to resume from has said which learning-rate plan
    continues its curve (a Trainer passed in is used as it is when its plan is the one needed). The caller has
    checked the config against the run's (`runconfig`: `train` here, `jaxtrain.pipeline`)."""
    cfg, run_dir = session.cfg, session.run
    fingerprint = tok.fingerprint(run_dir.tokenizer)
    data_iter, weights = loader.training_batches(cfg.data, run_dir, batch_size=session.batch_size, rows=session.rows)
    trainers: dict = {}
    if isinstance(session, Trainer):
        trainers[(session.lr_plan.hold_step, session.lr_plan.hold_lr) if session.lr_plan.hold_step >= 0 else None] = session

    def trainer_for(meta: dict | None, step: int) -> Trainer:
        """The Trainer whose learning-rate plan continues the checkpoint's curve (built once per plan)."""
        hold = None if meta is None else _schedule_hold(cfg, meta, step)
        if hold not in trainers:
            trainers[hold] = build_trainer(cfg, run_dir, session=session, lr_hold=hold)
        return trainers[hold]

    checkpointer = session.checkpointer()
    t0 = time.perf_counter()
    try:
        restored = resume.restore_latest_valid(checkpointer, lambda meta, step: trainer_for(meta, step).abstract_state(),
                                               data_iter, cfg, fingerprint)
    except BaseException:
        checkpointer.close()
        raise
    resumes = 0
    if restored is not None:
        state, meta, step = restored
        resumes = int(meta.get("resumes", 0)) + 1
        trainer = trainer_for(meta, step)
        _log_schedule(trainer, meta, step)
        log(f"[train] resuming from checkpoint step {step} in {checkpointer.directory} ({time.perf_counter() - t0:.1f}s)")
    else:
        trainer = trainer_for(None, 0)
        state = trainer.init_state()
        log("[train] no checkpoint found: starting from step 0")
    if jax.process_index() == 0:  # only now: a refused resume leaves the run's config as it was
        runconfig.record(cfg, run_dir)
    metrics = metrics or MetricsWriter.for_run(cfg, run_dir)
    # Lines written after a resume may repeat steps already logged (the steps since the checkpoint):
    # each carries the resume count, so readers keep the latest line of each step.
    metrics.tags["resume"] = resumes
    try:
        with PreemptionWatcher() as watcher:
            loop = _Loop(trainer, state, data_iter, checkpointer, metrics, fingerprint, weights, evaluate, watcher,
                         fault_injector, resumes, meta.get("tokens_by_source") if restored else None)
            return loop.run(max_steps_this_run, restart_time=time.perf_counter() - t0)
    finally:
        checkpointer.close()


def _schedule_hold(cfg: RunConfig, meta: dict, step: int) -> tuple[int, float] | None:
    """The learning rate must not jump on a resume: the hold that continues the checkpoint's curve under
    this config's plan (None: the plan continues it as it is), or ScheduleChange (optimizer.continue_plan)."""
    return optimizer.continue_plan(optimizer.saved_plan(meta), optimizer.plan(cfg.optimizer, cfg.train.steps), step)


def _log_schedule(trainer: Trainer, meta: dict, step: int) -> None:
    plan, saved = trainer.lr_plan, optimizer.saved_plan(meta)
    if plan.hold_step >= 0:
        log(f"[train] the schedule was extended after its decay began: the learning rate holds at {plan.hold_lr:.3g} "
            f"from step {step} and decays to {plan.floor:.3g} by step {plan.decay_end}")
    before, now = optimizer.lr_at(saved, step), optimizer.lr_at(plan, step)
    if not math.isclose(before, now, rel_tol=1e-6):  # a changed peak: the user's explicit choice
        log(f"[train] learning rate at step {step}: {now:.3g} (the checkpoint's schedule was at {before:.3g})")


class _Loop:
    """One invocation of training: the state it carries between steps and the questions it asks after each."""

    def __init__(self, trainer: Trainer, state, data_iter, checkpointer: Checkpointer, metrics: MetricsWriter,
                 fingerprint: str, weights: list[float], evaluate: EvalHook | None, watcher: PreemptionWatcher,
                 fault_injector: FaultInjector | None, resumes: int = 0, trained: dict[str, int] | None = None):
        self.trainer, self.cfg = trainer, trainer.cfg
        self.state, self.data_iter, self.checkpointer, self.metrics = state, data_iter, checkpointer, metrics
        self.fingerprint, self.weights, self.evaluate, self.watcher = fingerprint, weights, evaluate, watcher
        self.fault_injector, self.resumes = fault_injector, resumes
        self.step = int(jax.device_get(state.step))
        self.batches_drawn = 0
        self.window_losses: list = []
        self.rollbacks = 0
        self.compiled = None
        self.compile_s = 0.0
        self.last_eval: dict[str, float] = {}
        self.last_save_time = time.perf_counter()
        devices = trainer.mesh.devices.flat
        self.n_chips = len(devices)
        self.flops_per_token = flops.flops_per_token(self.cfg.model, trainer.seq_len, causal=True)
        self.peak = flops.peak_flops(devices[0].device_kind)
        self.throughput = Throughput(self.cfg.tokens_per_step, self.n_chips, self.flops_per_token, self.peak)
        self.mixture = MixtureMeter(trainer.sources, trained)
        self.profiler = StepProfiler(self.cfg.log, trainer.run)  # log.profile_steps: a jax.profiler trace

    def run(self, max_steps_this_run: int | None, restart_time: float) -> dict:
        cfg, total = self.cfg, self.cfg.train.steps
        self._log_header()
        end_step = total if max_steps_this_run is None else min(total, self.step + max_steps_this_run)
        if self.step >= total:
            log(f"[train] already at step {self.step} of {total}: nothing to train.")
        run_start = time.perf_counter()
        stage_starts = {stage.step for stage in cfg.data.mixture_schedule}
        pending = None  # the previous step's metrics, whose streak flag has not been read yet
        while self.step < end_step:
            if self.step in stage_starts:  # a new mixture: its loss level is a change, not a spike
                self._report_mixture()  # the stage that ends, against its own target
                self.state = self.state.replace(guard=guard_lib.reset_history(self.state.guard))
                log(f"[train] step {self.step}: mixture stage begins; the stability guard's history starts over")
            metrics = self._train_step(restart_time - run_start)
            self.window_losses.append(metrics["loss"])  # device scalars: read at the log, no sync per step
            self.checkpointer.raise_if_save_failed()  # a failed background write stops training here
            log_due = self.step % cfg.train.log_every == 0 or self.step == end_step
            evaluate = self.step % cfg.eval.every_steps == 0 or self.step == total
            save = self._save_due(end_step)
            # The guard's streak flag goes to the host without stalling the device: the previous step's is read
            # while this one runs. A step that waits anyway (log, eval, save, the last step) is read at once.
            waits = log_due or evaluate or save or self.step == end_step
            checks = ([] if pending is None else [pending]) + ([(self.step, metrics)] if waits else [])
            pending = None if waits else (self.step, metrics)
            if log_due:
                self._log(metrics)
            if self._bad_streak(checks):
                pending = None
                end_step = total if max_steps_this_run is None else end_step
                continue
            if self.watcher.should_stop(self.step, self.checkpointer.manager):
                if pending is not None and self._bad_streak([pending]):  # never save a step that rolls back
                    pending = None
                    end_step = total if max_steps_this_run is None else end_step
                    continue
                self._save()
                self.checkpointer.wait()
                log(f"[train] {self.watcher.signal_name or 'preemption notice'}: checkpoint of step {self.step} "
                    "committed; exiting")
                raise Preempted(self.step)
            if evaluate:
                self._evaluate()
            if save:
                self._save()
                self.last_save_time = time.perf_counter()
        self.profiler.close(self.state)
        self.checkpointer.wait()
        self.metrics.close()
        log(f"[train] stopped at step {self.step} after {format_duration(time.perf_counter() - run_start)}; "
            f"checkpoints in {self.checkpointer.directory}")
        return {"step": self.step, "state": self.state, "eval": self.last_eval, "trainer": self.trainer,
                "rollbacks": self.rollbacks, "compile_s": self.compile_s}

    def _log_header(self) -> None:
        t, device = self.trainer, self.trainer.mesh.devices.flat[0]
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.params))
        log(f"[train] model {n_params / 1e6:.2f}M params | mesh {dict(t.mesh.shape)} on {self.n_chips} "
            f"{device.platform} devices | batch {t.batch_size}x{t.seq_len} | "
            f"mixture {dict(zip(t.sources, (round(w, 3) for w in self.weights)))}")
        peak = f"{self.peak / 1e12:.0f} TFLOP/s/chip" if self.peak else f"unknown for {device.device_kind!r}, MFU n/a"
        log(f"[train] {self.flops_per_token / 1e6:.1f} MFLOPs/token (6N + causal attention); peak {peak}")

    def _train_step(self, restart_offset: float) -> dict:
        try:
            batch = next(self.data_iter)
        except Exception as e:  # ArrayRecord checks each chunk's hash: a shard damaged since the stage was checked
            if "Riegeli" not in str(e) and "array_record" not in str(e).lower():
                raise
            raise shards.ShardDamaged(
                f"{self.trainer.run.tfds}: a token shard is damaged ({str(e).splitlines()[0][:200]}); rerun the same "
                "command: the shards stage finds the file by its sha256 and rebuilds it, and training resumes from "
                "the last checkpoint.") from e
        self.mixture.add(batch)
        del batch["source_ids"]
        if self.fault_injector is not None:  # tests only: production batches carry no such field
            scale = self.fault_injector(self.batches_drawn)
            batch["loss_scale"] = np.full((batch["inputs"].shape[0],), 1.0 if scale is None else scale, np.float32)
        self.batches_drawn += 1
        batch = self.trainer.to_global(batch)
        if self.compiled is None:
            t = time.perf_counter()
            self.compiled = self.trainer.train_step.lower(self.state, batch).compile()
            self.compile_s = time.perf_counter() - t
            log(f"[train] compiled train step in {self.compile_s:.1f}s "
                f"(restart to first step: {restart_offset + time.perf_counter():.1f}s)")
            self.throughput.restart()
        self.state, metrics = self.compiled(self.state, batch)
        self.profiler.after_step(self.state)
        self.step += 1
        self.throughput.step()
        return metrics

    def _log(self, metrics: dict) -> dict:
        metrics = jax.device_get(metrics)  # blocks: the window's time is real compute time
        total = self.cfg.train.steps
        speed = self.throughput.measure()
        util, skipped = speed["mfu"], int(metrics["skipped_total"])
        losses = np.asarray(jax.device_get(self.window_losses), np.float64)
        self.window_losses = []
        finite = losses[np.isfinite(losses)]  # a step the guard skipped (NaN loss) is not averaged in
        window_loss = float(finite.mean()) if finite.size else float("nan")
        log(f"step {self.step:>6}/{total} {_bar(self.step / total)} loss {window_loss:.4f} "
            f"| gnorm {float(metrics['grad_norm']):.3f} | {speed['tokens_per_s']:,.0f} tok/s "
            f"| {speed['tokens_per_s_per_chip']:,.0f} tok/s/chip | MFU {'n/a' if util is None else f'{util:.1%}'} "
            f"| {speed['step_time_s'] * 1000:.0f} ms/step | eta {format_duration((total - self.step) * speed['step_time_s'])}"
            + (f" | skipped {skipped} rollbacks {self.rollbacks}" if skipped or self.rollbacks else ""))
        memory = device_memory_gib()
        self.metrics.write({"step": self.step, "loss": window_loss,
                            "loss_last": float(metrics["loss"]), "window_steps": int(losses.size),
                            "tokens_seen": self.step * self.cfg.tokens_per_step,
                            "grad_norm": float(metrics["grad_norm"]),
                            "lr": optimizer.lr_at(self.trainer.lr_plan, self.step - 1),
                            **({"device_memory_gib": memory} if memory is not None else {}),
                            **speed, "skipped_steps": skipped, "rollbacks": self.rollbacks,
                            "loss_zscore": float(metrics["loss_zscore"]),
                            "grad_norm_zscore": float(metrics["grad_norm_zscore"]),
                            "batch_checksum": int(metrics["batch_checksum"]),
                            "time": time.time(),
                            **self.mixture.window_shares()})
        return metrics

    def _bad_streak(self, checks: list[tuple[int, dict]]) -> bool:
        """Roll back when one of these (step, metrics), oldest first, ends a streak of max_bad_steps skipped
        updates. The state may be one step past that step (its update is dropped with the rollback)."""
        for step, metrics in checks:
            if int(jax.device_get(metrics["bad_streak"])) >= self.cfg.train.max_bad_steps:
                self.state, self.step = resume.rollback(self.checkpointer, self.trainer.abstract_state(), step,
                                                        self.rollbacks, self.cfg.train.max_rollbacks,
                                                        jax.device_get(metrics), reached=self.step)
                self.rollbacks += 1
                return True
        return False

    def _report_mixture(self) -> None:
        """Realized token shares since the last report, against the stage that trained them (a report
        is also made when a stage ends, so a report never spans two targets)."""
        if not self.mixture.since_report.any():
            return
        stages = [s for s in self.cfg.data.mixture_schedule if s.step < self.step]
        target = [w / sum(stages[-1].weights) for w in stages[-1].weights] if stages else self.weights
        log("[data] realized mixture (target tokens since the last report): " + self.mixture.report(target))

    def _evaluate(self) -> None:
        if self.evaluate is None:
            return
        self.last_eval = self.evaluate(self.state.params, self.step)
        self._report_mixture()
        self.metrics.write({"step": self.step, **self.last_eval})
        self.throughput.restart()

    def _save_due(self, end_step: int) -> bool:
        minutes = self.cfg.checkpoint.every_minutes
        timed_out = minutes > 0 and time.perf_counter() - self.last_save_time >= 60 * minutes
        return self.step % self.cfg.checkpoint.every_steps == 0 or self.step == end_step or timed_out

    def _save(self) -> None:
        plan = self.trainer.lr_plan
        meta = checkpoint_meta(self.step, to_dict(self.cfg), self.fingerprint, self.cfg.tokens_per_step,
                               resumes=self.resumes, tokens_by_source=self.mixture.trained(),
                               lr_hold=[plan.hold_step, plan.hold_lr] if plan.hold_step >= 0 else None)
        t = time.perf_counter()
        self.checkpointer.save(self.step, self.state, self.data_iter, meta, force=True)
        blocked = time.perf_counter() - t
        log(f"[ckpt] step {self.step}: saving (training blocked {blocked * 1000:.0f} ms; the write continues "
            "in the background)")
        self.metrics.write({"step": self.step, "checkpoint_blocking_s": blocked})
        self.metrics.flush()  # metrics as durable as the checkpoint (matters on gs://)
