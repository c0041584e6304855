"""Orbax checkpointing of the whole run state as one composite per step.

Items: `state` (step, params, optimizer state, RNG, stability-guard state;
sharded arrays, async save), `data` (the Grain iterator state, per process),
`meta` (JSON: tokenizer fingerprint, tokens seen, the resolved config).
Orbax writes each step into a temporary directory and renames it on commit,
so a failed or interrupted save never touches the previous good checkpoint;
an uncommitted directory is invisible to `all_steps()`.
Retention is Orbax's preservation policies: the latest N, plus every K-th step
kept for good.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from jaxtrain.rundir import RunDir


class _FrozenIteratorState:
    """Iterator state captured at save time.

    Grain's Orbax handler reads `get_state()` when it writes, which with an
    async save may happen after the loop has pulled more batches. Capturing
    the state now makes the saved data position exactly the saved step's.
    (Grain's handler treats non-DatasetIterator items as returning bytes.)
    """

    def __init__(self, state: dict):
        self._encoded = json.dumps(state, indent=1).encode()

    def get_state(self) -> bytes:
        return self._encoded


def checkpoint_dir(directory: str | pathlib.Path) -> epath.Path:
    """Absolute local path, or a gs:// URI kept as it is (Orbax writes to GCS itself)."""
    path = epath.Path(directory)
    return path if "://" in str(directory) else path.absolute()


def checkpoint_meta(step: int, config: dict, fingerprint: str, tokens_per_step: int, **extra) -> dict:
    """The `meta` item of every checkpoint (trained or imported): what resume checks against."""
    return {"step": step, "tokenizer_fingerprint": fingerprint, "tokens_seen": step * tokens_per_step,
            "config": config, **extra}


class Checkpointer:
    def __init__(self, run: RunDir, keep: int, async_save: bool = True, permanent_every: int = 0):
        policies: list = [preservation.LatestN(n=keep)]
        if permanent_every > 0:
            policies.append(preservation.EveryNSteps(interval_steps=permanent_every))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            create=True,
            preservation_policy=preservation.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=True,  # leftovers of a save killed mid-write
        )
        self.run = RunDir(run)
        self.directory = checkpoint_dir(self.run.checkpoints)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def quarantine(self, step: int, reason: str = "corrupt") -> pathlib.Path:
        """Move a checkpoint out of the run's way (kept for inspection, never deleted)."""
        target = checkpoint_dir(self.run.set_aside(reason)) / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target = target.with_name(f"{step}.{len(list(target.parent.iterdir()))}")
            (self.directory / str(step)).rename(target)
        self.manager.reload()
        return target

    def save(self, step: int, state: Any, data_iterator: Any | None, meta: dict, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_iterator.get_state()))
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> tuple[Any, dict]:
        """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs)."""
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        if data_iterator is not None and (self.directory / str(step) / "data").exists():  # imported: no data yet
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored["meta"]

    def restore_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

