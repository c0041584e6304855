"""Finding the checkpoint to resume from, refusing the wrong one, and rolling back after a bad streak.

A checkpoint is used only if its metadata matches the run (same tokenizer,
same architecture; a different mesh, device count or execution choice such as
remat is fine: arrays are restored straight into the new shardings) and all
of its arrays read back. A truncated or corrupt checkpoint is reported and
the previous one is tried.
"""

from __future__ import annotations

from typing import Any

from jaxtrain.config import RunConfig, to_dict
from jaxtrain.errors import JaxtrainError
from jaxtrain.models.transformer import ModelConfig
from jaxtrain.train.checkpoint import Checkpointer
from jaxtrain.utils import log
from jaxtrain.yamlconf import to_dict as section_dict

# Model fields that change how the model runs, not what it computes or stores.
EXECUTION_ONLY = {"dtype", "attention", "attention_interpret", "scan_layers", "remat"}


class IncompatibleCheckpoint(JaxtrainError, RuntimeError):
    """A checkpoint that reads back but belongs to another model or tokenizer."""


class TrainingDiverged(JaxtrainError, RuntimeError):
    """Bad steps kept coming after every rollback allowed."""


def check_compatible(meta: dict, cfg: RunConfig, fingerprint: str, where: str) -> None:
    saved_fp = meta.get("tokenizer_fingerprint")
    if saved_fp != fingerprint:
        raise IncompatibleCheckpoint(
            f"{where}: saved with tokenizer {saved_fp}, but this run's tokenizer is {fingerprint}; "
            "a model must keep the tokenizer it was trained with. Use the run's own tokenizer/tokenizer.model "
            "or start a new run directory."
        )
    # A field added to ModelConfig after the checkpoint was made has its default there: new fields
    # default to the computation as it was before them (e.g. rope_scaling: none).
    saved = {**section_dict(ModelConfig()), **(meta.get("config") or {}).get("model", {})}
    current = to_dict(cfg)["model"]
    diff = sorted(k for k in current if k not in EXECUTION_ONLY and saved.get(k) != current[k])
    if diff:
        detail = ", ".join(f"model.{k}: checkpoint {saved.get(k)!r} vs config {current[k]!r}" for k in diff)
        raise IncompatibleCheckpoint(
            f"{where}: incompatible model config ({detail}). Restore with the run's saved config "
            "(omit --config) or start a new run directory."
        )


def restore_latest_valid(
    checkpointer: Checkpointer, abstract_state: Any, data_iterator: Any, cfg: RunConfig, fingerprint: str
) -> tuple[Any, dict, int] | None:
    """(state, meta, step) of the newest readable, compatible checkpoint; None when there is none."""
    steps = checkpointer.all_steps()
    for step in reversed(steps):
        where = f"{checkpointer.directory}/{step}"
        try:
            meta = checkpointer.restore_meta(step)
        except Exception as e:  # unreadable metadata: treat like any other corruption
            moved = checkpointer.quarantine(step)
            log(f"[ckpt] checkpoint {where} is unreadable ({type(e).__name__}: {str(e)[:200]}); moved to {moved}; "
                "trying the previous one")
            continue
        check_compatible(meta, cfg, fingerprint, where)  # wrong run: refuse, do not fall back
        try:
            state, meta = checkpointer.restore(step, abstract_state, data_iterator)
        except Exception as e:
            moved = checkpointer.quarantine(step)
            log(f"[ckpt] checkpoint {where} is corrupt or truncated ({type(e).__name__}: {str(e)[:200]}); "
                f"moved to {moved}; trying the previous one")
            continue
        if step != steps[-1]:
            log(f"[ckpt] using checkpoint {step} instead of the latest ({steps[-1]}), which could not be read")
        return state, meta, step
    if steps:
        raise RuntimeError(
            f"none of the checkpoints {steps} in {checkpointer.directory} could be read; move the directory "
            "aside to start over (nothing was deleted)."
        )
    return None


def rollback(checkpointer: Checkpointer, abstract_state: Any, step: int, rollbacks: int, max_rollbacks: int,
             metrics: dict) -> tuple[Any, int]:
    """Back to the last checkpoint saved before the bad streak began: (state, its step).

    The data iterator keeps its place, so the batches since then are skipped
    (PaLM's remedy). Newer checkpoints, on the abandoned branch, are set aside."""
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
        f"restored checkpoint {target}, skipping the {step - target} batches since then")
    return state, target
