"""The training loop: resume, step, log, evaluate, checkpoint, recover.

Everything stateful lives in the run directory; calling `train` again on the
same directory continues from the latest valid checkpoint with the same data
order. SIGTERM/SIGINT save the current step and raise `Preempted`; repeated
bad steps roll back to the last checkpoint and skip the offending data.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np
from etils import epath

from jaxtrain.config import RunConfig, save_config, to_dict
from jaxtrain.data import loader, prepare
from jaxtrain.data import tokenizer as tok
from jaxtrain.evaluate.report import MetricsWriter
from jaxtrain.scaling import flops
from jaxtrain.train import resume
from jaxtrain.train.preemption import Preempted, PreemptionWatcher
from jaxtrain.train.session import Session, build_session
from jaxtrain.utils import format_duration, log

# A test hook: index of the batch drawn from the data iterator (0, 1, ...; it never rewinds) -> loss
# scale for that batch (None: untouched). Models bad data: used to inject spikes and NaNs.
FaultInjector = Callable[[int], float | None]


class TrainingDiverged(RuntimeError):
    pass


def format_eval(results: dict[str, float]) -> str:
    per_source = " ".join(
        f"{k.split('/')[1]}={v:.3f}" for k, v in results.items() if k.count("/") == 2 and k.endswith("/loss")
    )
    tasks = " ".join(f"{k.split('/')[1]}={v:.2f}" for k, v in results.items() if k.startswith("tasks/") and k.endswith("/acc"))
    return (f"eval loss {results['eval/loss']:.4f} (ppl {results['eval/perplexity']:.1f}, "
            f"{results['eval/bpb']:.3f} bits/byte) [{per_source}]" + (f" tasks acc [{tasks}]" if tasks else ""))


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def train(
    cfg: RunConfig,
    run_dir: str | pathlib.Path,
    *,
    max_steps_this_run: int | None = None,
    devices: list | None = None,
    fault_injector: FaultInjector | None = None,
) -> dict:
    """Train to cfg.train.steps (or stop after max_steps_this_run, as an interruption would)."""
    run_dir = epath.Path(run_dir)
    session = build_session(cfg, run_dir, devices)
    if jax.process_index() == 0:
        save_config(cfg, run_dir / "config.yaml")
    data_dir = prepare.tfds_dir(run_dir)
    fingerprint = tok.fingerprint(prepare.tokenizer_path(run_dir))
    weights = loader.mixture_weights(data_dir, session.sources, [s.weight for s in cfg.data.sources],
                                     temperature=cfg.data.mixture_temperature)
    local_batch = cfg.train.batch_size // jax.process_count()
    data_iter = loader.train_iterator(
        data_dir,
        session.sources,
        weights,
        seq_len=cfg.data.seq_len,
        batch_size=local_batch,
        seed=cfg.data.shuffle_seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_threads=cfg.data.num_threads,
        pack=cfg.data.pack,
        schedule=[(s.step, s.weights) for s in cfg.data.mixture_schedule],
        read_threads=cfg.data.read_threads,
    )
    checkpointer = session.checkpointer()
    t0 = time.perf_counter()
    restored = resume.restore_latest_valid(checkpointer, session.abstract_state(), data_iter, cfg, fingerprint)
    if restored is not None:
        state, _, step = restored
        log(f"[train] resuming from checkpoint step {step} in {checkpointer.directory} ({time.perf_counter() - t0:.1f}s)")
    else:
        state = session.init_state()
        log("[train] no checkpoint found: starting from step 0")
    try:
        with PreemptionWatcher() as watcher:
            return _loop(session, state, data_iter, checkpointer, fingerprint, weights, watcher,
                         max_steps_this_run, fault_injector, restart_time=time.perf_counter() - t0)
    finally:
        checkpointer.close()


def _loop(session: Session, state, data_iter, checkpointer, fingerprint: str, weights, watcher,
          max_steps_this_run: int | None, fault_injector: FaultInjector | None, restart_time: float) -> dict:
    cfg, run_dir = session.cfg, session.run_dir
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    n_chips = len(session.mesh.devices.flat)
    flops_per_tok = flops.flops_per_token(cfg.model, cfg.data.seq_len, causal=True)
    peak = flops.peak_flops(session.mesh.devices.flat[0].device_kind)
    step = int(jax.device_get(state.step))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    log(
        f"[train] model {n_params / 1e6:.2f}M params | mesh {dict(session.mesh.shape)} on {n_chips} "
        f"{session.mesh.devices.flat[0].platform} devices | batch {cfg.train.batch_size}x{cfg.data.seq_len} | "
        f"mixture {dict(zip(session.sources, (round(w, 3) for w in weights)))}"
    )
    peak_text = f"{peak / 1e12:.0f} TFLOP/s/chip" if peak else f"unknown for {session.mesh.devices.flat[0].device_kind!r}, MFU n/a"
    log(f"[train] {flops_per_tok / 1e6:.1f} MFLOPs/token (6N + causal attention); peak {peak_text}")
    metrics_log = MetricsWriter(run_dir, enabled=jax.process_index() == 0)
    total = cfg.train.steps
    end_step = total if max_steps_this_run is None else min(total, step + max_steps_this_run)
    if step >= total:
        log(f"[train] already at step {step} of {total}: nothing to train.")

    def save(at: int) -> None:
        meta = {"step": at, "tokenizer_fingerprint": fingerprint, "tokens_seen": at * tokens_per_step, "config": to_dict(cfg)}
        t = time.perf_counter()
        checkpointer.save(at, state, data_iter, meta, force=True)
        blocked = time.perf_counter() - t
        log(f"[ckpt] step {at}: saving (training blocked {blocked * 1000:.0f} ms; the write continues in the background)")
        metrics_log.write({"step": at, "checkpoint_blocking_s": blocked})
        metrics_log.flush()  # metrics as durable as the checkpoint (matters on gs://)

    compiled = None
    last_eval: dict[str, float] = {}
    rollbacks = 0
    last_save_time = time.perf_counter()
    window_start, window_steps = time.perf_counter(), 0
    run_start = time.perf_counter()
    batches_drawn = 0
    mix_window = np.zeros(len(session.sources), np.int64)  # target tokens per source in this log window
    mix_tokens = np.zeros(len(session.sources), np.int64)  # ... and since the last eval report
    while step < end_step:
        batch = next(data_iter)
        mix_window += loader.realized_mixture(batch, len(session.sources))
        del batch["source_ids"]
        scale = fault_injector(batches_drawn) if fault_injector else None
        batches_drawn += 1
        batch["loss_scale"] = np.full((batch["inputs"].shape[0],), 1.0 if scale is None else scale, np.float32)
        batch = session.to_global(batch)
        if compiled is None:
            t = time.perf_counter()
            compiled = session.train_step.lower(state, batch).compile()
            log(f"[train] compiled train step in {time.perf_counter() - t:.1f}s "
                f"(restart to first step: {restart_time + time.perf_counter() - run_start:.1f}s)")
            window_start = time.perf_counter()
        state, metrics = compiled(state, batch)
        step += 1
        window_steps += 1
        if step % cfg.train.log_every == 0 or step == end_step:
            metrics = jax.device_get(metrics)  # blocks: the window's time is real compute time
            elapsed = time.perf_counter() - window_start
            step_time = elapsed / window_steps
            tok_s = tokens_per_step / step_time
            util = flops.mfu(flops_per_tok, tok_s, n_chips, peak)
            skipped = int(metrics["skipped_total"])
            log(
                f"step {step:>6}/{total} {_bar(step / total)} loss {float(metrics['loss']):.4f} "
                f"| gnorm {float(metrics['grad_norm']):.3f} | {tok_s:,.0f} tok/s | {tok_s / n_chips:,.0f} tok/s/chip "
                f"| MFU {'n/a' if util is None else f'{util:.1%}'} | {step_time * 1000:.0f} ms/step "
                f"| eta {format_duration((total - step) * step_time)}"
                + (f" | skipped {skipped} rollbacks {rollbacks}" if skipped or rollbacks else "")
            )
            metrics_log.write(
                {"step": step, "loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
                 "tokens_per_s": tok_s, "tokens_per_s_per_chip": tok_s / n_chips, "mfu": util,
                 "step_time_s": step_time, "skipped_steps": skipped, "rollbacks": rollbacks,
                 "loss_zscore": float(metrics["loss_zscore"]), "time": time.time(),
                 **{f"mix/{s}": float(n / max(mix_window.sum(), 1)) for s, n in zip(session.sources, mix_window)}}
            )
            mix_tokens += mix_window
            mix_window[:] = 0
            window_start, window_steps = time.perf_counter(), 0
            if int(metrics["bad_streak"]) >= cfg.train.max_bad_steps:
                state, step, rollbacks = _rollback(session, checkpointer, step, rollbacks, metrics)
                end_step = total if max_steps_this_run is None else end_step
                continue
        if watcher.should_stop(step, checkpointer.manager):
            save(step)
            checkpointer.wait()
            log(f"[train] {watcher.signal_name or 'preemption notice'}: checkpoint of step {step} committed; exiting")
            raise Preempted(step)
        if step % cfg.eval.every_steps == 0 or step == total:
            last_eval = session.evaluate(state.params)
            log(f"[eval] step {step}: {format_eval(last_eval)}")
            share = mix_tokens / max(mix_tokens.sum(), 1)
            stage = [s for s in cfg.data.mixture_schedule if s.step <= step]
            target = [w / sum(stage[-1].weights) for w in stage[-1].weights] if stage else weights
            log("[data] realized mixture (target tokens since the last report): "
                + ", ".join(f"{s} {x:.1%} (configured {w:.1%})" for s, x, w in zip(session.sources, share, target)))
            mix_tokens[:] = 0
            metrics_log.write({"step": step, **last_eval})
            metrics_log.write_eval({"step": step, **last_eval}, kind="in-loop")
            window_start, window_steps = time.perf_counter(), 0
        minutes = cfg.checkpoint.every_minutes
        timed_out = minutes > 0 and time.perf_counter() - last_save_time >= 60 * minutes
        if step % cfg.checkpoint.every_steps == 0 or step == end_step or timed_out:
            save(step)
            last_save_time = time.perf_counter()
    checkpointer.wait()
    metrics_log.close()
    log(f"[train] stopped at step {step} after {format_duration(time.perf_counter() - run_start)}; "
        f"checkpoints in {checkpointer.directory}")
    return {"step": step, "state": state, "eval": last_eval, "session": session, "rollbacks": rollbacks}


def _rollback(session: Session, checkpointer, step: int, rollbacks: int, metrics: dict):
    """Back to the last checkpoint's weights; the data iterator keeps its place, so the bad window is skipped."""
    cfg = session.cfg
    checkpointer.wait()
    streak = int(metrics["bad_streak"])
    good = [s for s in checkpointer.all_steps() if s <= step - streak]  # saved before the streak began
    where = f"step {step} (loss {float(metrics['loss']):.4g}, grad norm {float(metrics['grad_norm']):.4g})"
    if rollbacks >= cfg.train.max_rollbacks or not good:
        reason = "no earlier checkpoint to roll back to" if not good else f"{rollbacks} rollbacks already"
        raise TrainingDiverged(
            f"training cannot recover at {where}: {streak} bad steps in a row and {reason}. "
            "Lower optimizer.learning_rate, raise train.max_rollbacks, or inspect the data around this step."
        )
    target = good[-1]
    state = resume.restore_state_only(checkpointer, session.abstract_state(), target)
    for newer in (s for s in checkpointer.all_steps() if s > target):  # the abandoned branch
        checkpointer.quarantine(newer, reason="abandoned")
    # Counters carry on across the rollback: the streak is over, the skipped total is not forgotten.
    guard = state.guard
    state = state.replace(guard={**guard, "bad_streak": guard["bad_streak"] * 0,
                                 "skipped": guard["skipped"] * 0 + int(metrics["skipped_total"])})
    log(f"[train] rollback {rollbacks + 1}: {streak} bad steps in a row at {where}; "
        f"restored checkpoint {target}, skipping the {step - target} batches since then")
    return state, target, rollbacks + 1


def load_params(cfg: RunConfig, run_dir: pathlib.Path, step: int | None = None) -> tuple[Session, Any, int]:
    """Restore a checkpoint's parameters (latest by default) onto a fresh mesh."""
    session = build_session(cfg, run_dir)
    checkpointer = session.checkpointer()
    steps = checkpointer.all_steps()
    step = steps[-1] if (step is None and steps) else step
    if step is None:
        raise FileNotFoundError(f"{checkpointer.directory}: no checkpoints; run `jaxtrain train` first.")
    if step not in steps:
        raise FileNotFoundError(f"{checkpointer.directory}: no checkpoint for step {step}; have {steps}.")
    state, _ = checkpointer.restore(step, session.abstract_state())
    checkpointer.close()
    return session, state.params, step
