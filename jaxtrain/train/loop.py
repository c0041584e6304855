"""The training loop: build the sharded state, resume, step, log, evaluate, checkpoint.

Everything stateful lives in the run directory; calling `train` again on the
same directory continues from the latest checkpoint with the same data order.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxtrain.config import RunConfig, save_config, to_dict, validate
from jaxtrain.data import loader, prepare
from jaxtrain.data import tokenizer as tok
from jaxtrain.evaluate import evaluation
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.scaling import flops
from jaxtrain.train import checkpoint as ckpt_lib
from jaxtrain.train import state as state_lib
from jaxtrain.train.optimizer import make_optimizer
from jaxtrain.train.step import TrainState, make_eval_step, make_forward, make_train_step
from jaxtrain.utils import format_duration, log


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

    @property
    def sources(self) -> list[str]:
        return [s.name for s in self.cfg.data.sources]

    def to_global(self, batch: dict) -> dict:
        """This process's numpy batch -> globally sharded jax.Arrays."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v) for k, v in batch.items()}

    def checkpointer(self) -> ckpt_lib.Checkpointer:
        return ckpt_lib.Checkpointer(self.run_dir / "checkpoints", self.cfg.checkpoint.keep, self.cfg.checkpoint.async_save)

    def abstract_state(self) -> TrainState:
        return state_lib.abstract_state(self.spec, self.tx, self.shardings)

    def evaluate(self, params: Any) -> dict[str, float]:
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
        make_train_step(forward, tx, cfg.train.z_loss, cfg.train.microbatches),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(make_eval_step(forward), in_shardings=(shardings.params, batch_sharding), out_shardings=replicated)
    return Session(cfg, pathlib.Path(run_dir), mesh, spec, tx, shardings, batch_sharding, train_step, eval_step)


class MetricsLog:
    """Appends one JSON object per line to run_dir/metrics.jsonl."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def write(self, record: dict) -> None:
        if jax.process_index() == 0:
            with self.path.open("a") as f:
                f.write(json.dumps({k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in record.items()}) + "\n")


def _fmt_eval(results: dict[str, float]) -> str:
    per_source = " ".join(f"{k.split('/')[1]}={v:.3f}" for k, v in results.items() if k.count("/") == 2)
    return f"eval loss {results['eval/loss']:.4f} (ppl {results['eval/perplexity']:.1f}) [{per_source}]"


def train(cfg: RunConfig, run_dir: str | pathlib.Path, *, max_steps_this_run: int | None = None) -> dict:
    """Train to cfg.train.steps (or stop early after max_steps_this_run, as an interruption would)."""
    run_dir = pathlib.Path(run_dir)
    session = build_session(cfg, run_dir)
    save_config(cfg, run_dir / "config.yaml")
    data_dir = prepare.tfds_dir(run_dir)
    fingerprint = tok.fingerprint(prepare.tokenizer_path(run_dir))
    weights = loader.mixture_weights(data_dir, session.sources, [s.weight for s in cfg.data.sources])
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
    )
    checkpointer = session.checkpointer()
    latest = checkpointer.latest_step()
    if latest is not None:
        t0 = time.perf_counter()
        state, meta = checkpointer.restore(latest, session.abstract_state(), data_iter)
        if meta.get("tokenizer_fingerprint") != fingerprint:
            raise RuntimeError(
                f"{checkpointer.directory}/{latest}: saved with tokenizer {meta.get('tokenizer_fingerprint')}, "
                f"but {prepare.tokenizer_path(run_dir)} is {fingerprint}; use the run's own tokenizer."
            )
        log(f"[train] resuming from checkpoint step {latest} in {checkpointer.directory} ({time.perf_counter() - t0:.1f}s)")
    else:
        state = state_lib.init_state(cfg.model, session.tx, session.shardings, cfg.train.seed)
        log("[train] no checkpoint found: starting from step 0")
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    n_chips = len(session.mesh.devices.flat)
    flops_per_tok = flops.flops_per_token(cfg.model, cfg.data.seq_len, causal=True)
    peak = flops.peak_flops(session.mesh.devices.flat[0].device_kind)
    start_step = int(jax.device_get(state.step))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    log(
        f"[train] model {n_params / 1e6:.2f}M params | mesh {dict(session.mesh.shape)} on {n_chips} "
        f"{jax.devices()[0].platform} devices | batch {cfg.train.batch_size}x{cfg.data.seq_len} | "
        f"mixture {dict(zip(session.sources, (round(w, 3) for w in weights)))}"
    )
    peak_text = f"{peak / 1e12:.0f} TFLOP/s/chip" if peak else f"unknown for {session.mesh.devices.flat[0].device_kind!r}, MFU n/a"
    log(f"[train] {flops_per_tok / 1e6:.1f} MFLOPs/token (6N + causal attention); peak {peak_text}")
    metrics_log = MetricsLog(run_dir / "metrics.jsonl")
    total = cfg.train.steps
    end_step = total if max_steps_this_run is None else min(total, start_step + max_steps_this_run)
    if start_step >= total:
        log(f"[train] already at step {start_step} of {total}: nothing to train.")

    def save(step: int, force: bool = False) -> None:
        meta = {"step": step, "tokenizer_fingerprint": fingerprint, "tokens_seen": step * tokens_per_step, "config": to_dict(cfg)}
        checkpointer.save(step, state, data_iter, meta, force=force)

    compiled = None
    last_eval: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    run_start = time.perf_counter()
    for step in range(start_step, end_step):
        batch = session.to_global(next(data_iter))
        if compiled is None:
            t0 = time.perf_counter()
            compiled = session.train_step.lower(state, batch).compile()
            log(f"[train] compiled train step in {time.perf_counter() - t0:.1f}s")
            window_start = time.perf_counter()
        state, metrics = compiled(state, batch)
        window_steps += 1
        done = step + 1
        if done % cfg.train.log_every == 0 or done == end_step:
            metrics = jax.device_get(metrics)  # blocks: the window's time is real compute time
            elapsed = time.perf_counter() - window_start
            step_time = elapsed / window_steps
            tok_s = tokens_per_step / step_time
            util = flops.mfu(flops_per_tok, tok_s, n_chips, peak)
            eta = (total - done) * step_time
            bar = _bar(done / total)
            log(
                f"step {done:>6}/{total} {bar} loss {float(metrics['loss']):.4f} | gnorm {float(metrics['grad_norm']):.3f} "
                f"| {tok_s:,.0f} tok/s | {tok_s / n_chips:,.0f} tok/s/chip | MFU {'n/a' if util is None else f'{util:.1%}'} "
                f"| {step_time * 1000:.0f} ms/step | eta {format_duration(eta)}"
            )
            metrics_log.write(
                {"step": done, "loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
                 "tokens_per_s": tok_s, "tokens_per_s_per_chip": tok_s / n_chips, "mfu": util,
                 "step_time_s": step_time, "time": time.time()}
            )
            window_start, window_steps = time.perf_counter(), 0
        if done % cfg.eval.every_steps == 0 or done == total:
            last_eval = session.evaluate(state.params)
            log(f"[eval] step {done}: {_fmt_eval(last_eval)}")
            metrics_log.write({"step": done, **last_eval})
            window_start, window_steps = time.perf_counter(), 0
        if done % cfg.checkpoint.every_steps == 0 or done == end_step:
            save(done, force=True)
    checkpointer.close()
    final_step = int(jax.device_get(state.step))
    log(f"[train] stopped at step {final_step} after {format_duration(time.perf_counter() - run_start)}; checkpoints in {checkpointer.directory}")
    return {"step": final_step, "state": state, "eval": last_eval, "session": session}


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def load_params(cfg: RunConfig, run_dir: pathlib.Path, step: int | None = None) -> tuple[Session, Any, int]:
    """Restore a checkpoint's parameters (latest by default) onto a fresh mesh."""
    session = build_session(cfg, run_dir)
    checkpointer = session.checkpointer()
    step = checkpointer.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{checkpointer.directory}: no checkpoints; run `jaxtrain train` first.")
    if step not in checkpointer.all_steps():
        raise FileNotFoundError(f"{checkpointer.directory}: no checkpoint for step {step}; have {checkpointer.all_steps()}.")
    state, _ = checkpointer.restore(step, session.abstract_state())
    checkpointer.close()
    return session, state.params, step
