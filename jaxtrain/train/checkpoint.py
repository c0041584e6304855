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
from jax.experimental import multihost_utils
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


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


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
        """Move a checkpoint out of the run's way (kept for inspection, never deleted).

        Every process calls this together: a barrier first (nobody is still reading it), then
        process 0 moves it, then a barrier again (nobody lists it before it is gone)."""
        target = checkpoint_dir(self.run.set_aside(reason)) / str(step)
        if target.exists():
            target = target.with_name(f"{step}.{len(list(target.parent.iterdir()))}")
        _barrier(f"jaxtrain:quarantine-{step}-before")
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        _barrier(f"jaxtrain:quarantine-{step}-after")
        self.manager.reload()
        return target

    def save(self, step: int, state: Any, data_iterator: Any | None, meta: dict, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_iterator.get_state()))
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> tuple[Any, dict]:
        """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs), and the data position."""
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        data_state = self.data_state(step) if data_iterator is not None else None
        if data_state is not None:
            data_iterator.set_state(data_state)
        return restored["state"], restored["meta"]

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """The parameters alone, onto the shardings carried by `abstract_params`: Orbax's partial restore
        of the `state` item (the optimizer state is never read)."""
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
        with ocp.PyTreeCheckpointer() as reader:
            restored = reader.restore(self.directory / str(step) / "state",
                                      args=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                                                  restore_args={"params": restore_args},
                                                                  partial_restore=True))
        return restored["params"]

    def data_state(self, step: int) -> dict | None:
        """The data position saved with a step (None for an imported checkpoint, which has none).

        Every process saves the same position (the next step of the global batch order), so any
        process's file serves every process, whatever their number now: Grain's handler would look for
        this process's own `process_i-of-N.json`, which a changed process count does not have."""
        files = sorted((self.directory / str(step) / "data").glob("process_*-of-*.json"))
        states = [json.loads(f.read_text()) for f in files]
        if not states:
            return None
        if any(s != states[0] for s in states[1:]):
            raise ValueError(f"{self.directory}/{step}/data: processes saved different data positions {states}")
        return states[0]

    def state_metadata(self, step: int) -> Any:
        """The saved state's tree of array metadata (shapes, dtypes), read without reading any array."""
        state_dir = self.directory / str(step) / "state"
        if not state_dir.exists():
            raise FileNotFoundError(f'Item "state" was not found in checkpoint {self.directory}/{step}')
        tree_file = state_dir / "_METADATA"  # Orbax's tree description; it reads a damaged one as an empty tree
        if tree_file.exists():
            try:
                json.loads(tree_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"DATA_LOSS: {tree_file} is corrupt or truncated ({e})") from e
        metadata = ocp.StandardCheckpointer().metadata(state_dir).item_metadata
        tree = getattr(metadata, "tree", metadata)
        if not jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape")):
            raise ValueError(f"DATA_LOSS: {state_dir} describes no arrays")
        return tree

    def restore_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

