"""Finding the checkpoint to resume from, refusing the wrong one, and rolling back after a bad streak.

A checkpoint is used only if it belongs to this run (same tokenizer, same
architecture, the same state structure; a different mesh, device count,
process count or execution choice such as remat is fine: arrays are restored
straight into the new shardings) and its arrays read back. What happens
otherwise depends on why:

  incompatible   the tokenizer, the model or the state's structure differ:
                 refused, naming the differing keys; the checkpoint stays.
  unreadable     missing or truncated files, undecodable data: moved to
                 checkpoints.corrupt/ (never deleted) and the previous one tried.
  unavailable    a transient storage error: retried with backoff; if it
                 persists, training stops and nothing is moved.

On several processes every decision is agreed (each process's verdict is
gathered and the gravest wins), and only process 0 moves a checkpoint, after
a barrier, so no process is still reading it.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxtrain.config import RunConfig, to_dict
from jaxtrain.errors import JaxtrainError
from jaxtrain.models.transformer import ModelConfig, execution_fields
from jaxtrain.rundir import RunDir
from jaxtrain.train.checksums import keyed_leaves
from jaxtrain.train.checkpoint import (
    DAMAGED_STATUS,
    TRANSIENT_STATUS,
    CheckpointDamaged,
    Checkpointer,
    storage_status,
)
from jaxtrain.utils import log
from jaxtrain.yamlconf import to_dict as section_dict

RESTORE_ATTEMPTS = 4  # a transient storage error gets three more tries, 1 s, 2 s and 4 s apart
_sleep: Callable[[float], None] = time.sleep  # tests replace it

OK, UNAVAILABLE, UNREADABLE, FAILED = 0, 1, 2, 3  # verdicts, in order of gravity

# Verdicts by exception type. Damage the run's own code finds is CheckpointDamaged; a file gone is
# FileNotFoundError (Orbax, etils.epath, gcsfs on HTTP 404). TensorStore's errors carry their kind only as a
# status code (checkpoint.storage_status). The GCS clients' own types count when their module is loaded (an
# exception of a module never imported cannot occur), so none of them becomes a dependency.
_UNAVAILABLE_TYPES = (ConnectionError, TimeoutError)  # aiohttp's and asyncio's timeouts are TimeoutErrors
_UNREADABLE_TYPES = (CheckpointDamaged, FileNotFoundError)
_CLIENT_TYPES = {
    UNAVAILABLE: {
        "requests.exceptions": ("ConnectionError", "Timeout", "ChunkedEncodingError"),  # gcsfs's transport
        "aiohttp": ("ClientConnectionError", "ClientPayloadError"),  # gcsfs's async transport
        "google.auth.exceptions": ("TransportError",),
        "google.api_core.exceptions": ("TooManyRequests", "InternalServerError", "BadGateway", "ServiceUnavailable",
                                       "GatewayTimeout", "DeadlineExceeded"),  # google-cloud-storage
        "tensorflow.python.framework.errors_impl": ("UnavailableError", "DeadlineExceededError", "AbortedError"),
    },
    UNREADABLE: {
        "google.api_core.exceptions": ("NotFound",),
        # etils.epath reads gs:// through tf.io.gfile when TensorFlow is installed, which raises these
        "tensorflow.python.framework.errors_impl": ("NotFoundError", "DataLossError", "OutOfRangeError"),
    },
}
_GCSFS_RETRIED = {408, 429, 500, 501, 502, 503, 504}  # gcsfs.retry.HttpError.code it retries, as ints or strings


class IncompatibleCheckpoint(JaxtrainError, RuntimeError):
    """A checkpoint that reads back but belongs to another model, tokenizer or state structure."""


class CheckpointUnavailable(JaxtrainError, RuntimeError):
    """A checkpoint that could not be read now, for a reason that does not make it corrupt."""


class TrainingDiverged(JaxtrainError, RuntimeError):
    """Bad steps kept coming after every rollback allowed."""


def _client_types(verdict: int) -> tuple[type, ...]:
    modules = ((sys.modules.get(name), names) for name, names in _CLIENT_TYPES[verdict].items())
    return tuple(getattr(m, n) for m, names in modules if m is not None for n in names if hasattr(m, n))


def classify(error: BaseException) -> int:
    """The verdict on a failed read, from the exception's type (and, for TensorStore, its status code)."""
    while type(error) is Exception and error.__cause__ is not None:
        error = error.__cause__  # Orbax wraps a failed array read in a bare Exception raised from the cause
    status = storage_status(error)
    gcsfs = sys.modules.get("gcsfs.retry")
    if (isinstance(error, _UNAVAILABLE_TYPES + _client_types(UNAVAILABLE)) or status in TRANSIENT_STATUS
            or (gcsfs is not None and isinstance(error, gcsfs.HttpError) and _http_code(error) in _GCSFS_RETRIED)):
        return UNAVAILABLE
    if isinstance(error, _UNREADABLE_TYPES + _client_types(UNREADABLE)) or status in DAMAGED_STATUS:
        return UNREADABLE
    return FAILED


def _http_code(error: BaseException) -> int | None:
    code = getattr(error, "code", None)
    return int(code) if str(code).isdigit() else None


def _agreed(verdict: int) -> int:
    """The gravest verdict of all processes (every process calls this at the same point)."""
    if jax.process_count() == 1:
        return verdict
    return int(np.max(multihost_utils.process_allgather(np.asarray(verdict, np.int32))))


def _agreed_steps(checkpointer: Checkpointer) -> list[int]:
    steps = checkpointer.all_steps()
    if jax.process_count() > 1:
        padded = np.full(1024, -1, np.int64)
        padded[: len(steps[-1024:])] = steps[-1024:]
        steps = [int(s) for s in multihost_utils.broadcast_one_to_all(padded) if s >= 0]
    return steps


def check_compatible(meta: dict, cfg: RunConfig, fingerprint: str, where: str) -> None:
    saved_fp = meta.get("tokenizer_fingerprint")
    if saved_fp != fingerprint:
        raise IncompatibleCheckpoint(
            f"{where}: saved with tokenizer {saved_fp}, but this run's tokenizer is {fingerprint}; "
            f"a model must keep the tokenizer it was trained with. Use the run's own tokenizer "
            f"({RunDir(cfg.run_dir).tokenizer if cfg.run_dir else 'RUN/tokenizer/'}) or start a new run directory."
        )
    saved_batch = ((meta.get("config") or {}).get("train") or {}).get("batch_size")
    if meta.get("step", 0) > 0 and saved_batch is not None and saved_batch != cfg.train.batch_size:
        raise IncompatibleCheckpoint(
            f"{where}: trained with train.batch_size={saved_batch} (the global batch), this run has "
            f"train.batch_size={cfg.train.batch_size}; the saved data position counts batches of {saved_batch}. "
            f"Resume with train.batch_size={saved_batch} (microbatches change the per-step memory, not the batch), "
            "or start a new run directory. The checkpoint was left where it is.")
    # A field added to ModelConfig after the checkpoint was made has its default there: new fields
    # default to the computation as it was before them (e.g. rope_scaling: none).
    saved = {**section_dict(ModelConfig()), **(meta.get("config") or {}).get("model", {})}
    current = to_dict(cfg)["model"]
    diff = sorted(k for k in current.keys() - execution_fields() if saved.get(k) != current[k])
    if diff:
        detail = ", ".join(f"model.{k}: checkpoint {saved.get(k)!r} vs config {current[k]!r}" for k in diff)
        raise IncompatibleCheckpoint(
            f"{where}: incompatible model config ({detail}). Restore with the run's saved config "
            "(omit --config) or start a new run directory."
        )


def _leaves(tree: Any) -> dict[str, tuple]:
    return {k: (tuple(x.shape), str(np.dtype(x.dtype))) for k, x in keyed_leaves(tree).items()}


def check_structure(saved_tree: Any, abstract_state: Any, where: str, hint: str) -> None:
    """The saved arrays must be this run's state arrays, key for key, shape for shape: refuse otherwise."""
    saved, wanted = _leaves(saved_tree), _leaves(abstract_state)
    diff = [f"{k}: checkpoint {saved[k][0]} vs run {wanted[k][0]}" for k in sorted(saved.keys() & wanted.keys())
            if saved[k][0] != wanted[k][0]]
    for keys, side in ((saved.keys() - wanted.keys(), "the checkpoint"), (wanted.keys() - saved.keys(), "this run")):
        groups: dict[str, list[str]] = {}
        for k in sorted(keys):  # a structure change moves whole subtrees: name each once
            groups.setdefault("/".join(k.split("/")[:2]), []).append(k)
        diff += [f"{p}/... ({len(ks)} arrays): only in {side}" if len(ks) > 1 else f"{ks[0]}: only in {side}"
                 for p, ks in groups.items()]
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise IncompatibleCheckpoint(f"{where}: its state does not fit this run ({shown}). {hint} The checkpoint was "
                                     "left where it is.")


def _read(what: str, where: str, read: Callable[[], Any]) -> tuple[int, Any, BaseException | None]:
    """(agreed verdict, value, this process's error): transient errors are retried; the verdict is the same on
    every process."""
    for attempt in range(RESTORE_ATTEMPTS):
        try:
            value, verdict, error = read(), OK, None
        except Exception as e:  # classified below; nothing is moved unless every process can say why
            value, verdict, error = None, classify(e), e
        verdict = _agreed(verdict)
        if verdict != UNAVAILABLE:
            break
        if attempt + 1 < RESTORE_ATTEMPTS:
            log(f"[ckpt] {where}: {what} unavailable ({str(error)[:200]}); retrying in {2 ** attempt} s")
            _sleep(2 ** attempt)
    if verdict == UNAVAILABLE:
        raise CheckpointUnavailable(f"{where}: could not read its {what} after {RESTORE_ATTEMPTS} attempts "
                                    f"({type(error).__name__}: {str(error)[:300]}); nothing was moved. Check the "
                                    "storage and rerun the same command.")
    if verdict == FAILED:
        detail = f" ({type(error).__name__}: {str(error)[:300]})" if error else " (on another process)"
        raise CheckpointUnavailable(f"{where}: reading its {what} failed{detail}; nothing was moved. If the "
                                    "checkpoint is damaged, move it aside by hand and rerun.")
    return verdict, value, error


def restore_latest_valid(
    checkpointer: Checkpointer, abstract_state: Callable[[dict, int], Any], data_iterator: Any, cfg: RunConfig,
    fingerprint: str
) -> tuple[Any, dict, int] | None:
    """(state, meta, step) of the newest readable, compatible checkpoint; None when there is none.
    abstract_state(meta, step): the state to restore into, given the checkpoint's metadata (read first, so
    the caller can build its Trainer for the checkpoint's learning-rate plan before any array is read)."""
    steps = _agreed_steps(checkpointer)
    hint = ("A setting that shapes the training state changed (train.spike_window or the optimizer's structure, "
            "e.g. optimizer.grad_clip switched on or off): resume with the run's saved value, or start a new run "
            "directory.")
    for step in reversed(steps):
        where = f"{checkpointer.directory}/{step}"
        verdict, meta, error = _read("metadata", where, lambda: checkpointer.restore_meta(step))
        if verdict == OK:
            check_compatible(meta, cfg, fingerprint, where)  # wrong run: refuse, do not fall back
            target = abstract_state(meta, step)
            verdict, saved_tree, error = _read("array metadata", where, lambda: checkpointer.state_metadata(step))
        if verdict == OK:
            check_structure(saved_tree, target, where, hint)
            verdict, restored, error = _read("arrays", where, lambda: checkpointer.restore(step, target, data_iterator))
        if verdict == UNREADABLE:
            moved = checkpointer.quarantine(step)
            why = f": {str(error)[:200]}" if error is not None else " (on another process)"
            log(f"[ckpt] checkpoint {where} is corrupt or truncated (unreadable{why}); moved to {moved}; "
                "trying the previous one")
            continue
        state, meta = restored
        if step != steps[-1]:
            log(f"[ckpt] using checkpoint {step} instead of the latest ({steps[-1]}), which could not be read")
        if jax.process_count() > 1:
            print(f"[ckpt] process {jax.process_index()}/{jax.process_count()}: restored step {step}", flush=True)
        return state, meta, step
    if steps:
        raise CheckpointUnavailable(
            f"none of the checkpoints {steps} in {checkpointer.directory} could be read; they were moved to "
            f"{checkpointer.run.set_aside('corrupt')} (nothing was deleted). Move them back to retry, or start over."
        )
    return None


def rollback(checkpointer: Checkpointer, abstract_state: Any, step: int, rollbacks: int, max_rollbacks: int,
             metrics: dict, reached: int | None = None) -> tuple[Any, int]:
    """Back to the last checkpoint saved before the bad streak that ended at `step` began: (state, its step).

    The data iterator keeps its place, so the batches since then are skipped
    (PaLM's remedy); `reached` is the step the loop had dispatched (one past `step` when it read the streak
    one step late). Newer checkpoints, on the abandoned branch, are set aside."""
    checkpointer.wait()
    streak = int(metrics["bad_streak"])
    good = [s for s in checkpointer.all_steps() if s <= step - streak]  # saved before the streak began
    where = f"step {step} (loss {float(metrics['loss']):.4g}, grad norm {float(metrics['grad_norm']):.4g})"
    if rollbacks >= max_rollbacks or not good:
        reason = "no earlier checkpoint to roll back to" if not good else f"{rollbacks} rollbacks already"
        raise TrainingDiverged(
            f"training cannot recover at {where}: {streak} bad steps in a row and {reason}. "
            "Lower optimizer.learning_rate, raise train.max_rollbacks, or inspect the data around this step."
        )
    target = good[-1]
    state, _ = checkpointer.restore(target, abstract_state)
    for newer in (s for s in checkpointer.all_steps() if s > target):  # the abandoned branch
        checkpointer.quarantine(newer, reason="abandoned")
    # Counters carry on across the rollback: the streak is over, the skipped total is not forgotten.
    guard = state.guard
    state = state.replace(guard={**guard, "bad_streak": guard["bad_streak"] * 0,
                                 "skipped": guard["skipped"] * 0 + int(metrics["skipped_total"])})
    log(f"[train] rollback {rollbacks + 1}: {streak} bad steps in a row at {where}; "
        f"restored checkpoint {target}, skipping the {(reached or step) - target} batches since then")
    return state, target
