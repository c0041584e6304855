"""Orbax checkpointing of the whole run state as one composite per step.

Items: `state` (step, params, optimizer state, RNG, stability-guard state;
sharded arrays, async save), `data` (the Grain iterator state, per process),
`meta` (JSON: tokenizer fingerprint, tokens seen, the resolved config, and a
checksum of every array of `state`).
Orbax writes each step into a temporary directory and renames it on commit,
so a failed or interrupted save never touches the previous good checkpoint;
an uncommitted directory is invisible to `all_steps()`.
Checksums: two 32-bit sums of each array's bits (plain, and weighted by the
element's position, so a swap is caught as well as any single flipped bit),
computed on the devices that hold the array by one jitted reduction (the
modular sums do not depend on how the array is sharded, so a resume on
another mesh checks the same numbers) and recorded in `meta`. Restore
recomputes them on the restored arrays: a mismatch is damage, named by leaf
(Orbax and TensorStore check neither; a flipped bit in the array data reads
back as a valid number).
Retention is Orbax's preservation policies: the latest N, plus every K-th step
kept for good.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from jaxtrain.errors import JaxtrainError
from jaxtrain.rundir import RunDir

# TensorStore (Orbax's array store, with its own GCS client) raises a bare ValueError for every failure and
# says which only in the message: absl's status code comes first, "DATA_LOSS: ..." (its Python binding,
# python/tensorstore/status.cc, drops the prefix for INVALID_ARGUMENT alone). HTTP 408, 429 and 5xx from GCS
# reach Python as UNAVAILABLE once its own retries are spent.
_STATUS_PREFIX = re.compile(r"([A-Z_]+): ")
TRANSIENT_STATUS = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"})
DAMAGED_STATUS = frozenset({"DATA_LOSS", "NOT_FOUND", "OUT_OF_RANGE", "FAILED_PRECONDITION"})


class CheckpointDamaged(JaxtrainError, ValueError):
    """A checkpoint whose files are missing, truncated or do not decode: it will not read back, however often."""


def storage_status(error: BaseException) -> str | None:
    """The absl status code at the start of a bare ValueError's message (TensorStore), or of a bare OSError's
    (a status re-raised as an I/O error: none of the libraries read here does so, but tests/test_restore.py
    stands a GCS outage in that way). Subclasses (JSONDecodeError, FileNotFoundError, ...) never carry one."""
    match = _STATUS_PREFIX.match(str(error)) if type(error) in (ValueError, OSError) else None
    return match.group(1) if match else None


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


def leaf_key(path: tuple) -> str:
    """'opt_state/1/0/mu/embed_VxD': the same for a saved tree (dicts) and the run's state (dataclasses)."""
    return "/".join(str(next(getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a))) for k in path)


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def keyed_leaves(tree: Any) -> dict[str, Any]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_array)[0]
    return {leaf_key(path): x for path, x in flat}


def _words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words: narrower types widened, wider ones split, booleans as bytes."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32 if size >= 4 else jnp.dtype(f"uint{8 * size}"))
    return bits.astype(jnp.uint32).ravel()


@jax.jit
def _sums(leaves: list[jax.Array]) -> jax.Array:
    def one(x: jax.Array) -> jax.Array:
        w = _words(x)
        odd = jnp.arange(w.size, dtype=jnp.uint32) * 2 + 1  # odd weights: a flipped bit always changes the sum
        return jnp.stack([w.sum(dtype=jnp.uint32), (w * odd).sum(dtype=jnp.uint32)])
    return jnp.stack([one(x) for x in leaves]) if leaves else jnp.zeros((0, 2), jnp.uint32)


def checksums(tree: Any) -> dict[str, str]:
    """Leaf key -> 16 hex digits, computed where the arrays live (one small transfer back)."""
    keyed = keyed_leaves(tree)
    values = np.asarray(_sums(list(keyed.values())))
    return {k: f"{int(a):08x}{int(b):08x}" for k, (a, b) in zip(keyed, values)}


def verify_checksums(tree: Any, saved: dict[str, str] | None, where: str) -> None:
    """Raise CheckpointDamaged naming the first array whose bits differ from what was saved (a checkpoint
    written before checksums existed, with none recorded, is trusted)."""
    if saved is None:
        return
    now = checksums(tree)
    bad = [k for k in now if saved.get(k) != now[k]]
    if bad:
        first = bad[0]
        raise CheckpointDamaged(f"{where}: array {first} does not match its checksum (saved {saved.get(first)}, "
                                f"read {now[first]}){f' (and {len(bad) - 1} more arrays)' if len(bad) > 1 else ''}: "
                                "its data is damaged.")


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Checkpointer:
    def __init__(self, run: RunDir, keep: int, async_save: bool = True, permanent_every: int = 0,
                 read_only: bool = False):
        """read_only: a reader (eval, sample, export) beside a possibly live trainer: creates nothing, deletes
        nothing, and leaves in-progress saves (Orbax's temporary directories) alone."""
        policies: list = [preservation.LatestN(n=keep)]
        if permanent_every > 0:
            policies.append(preservation.EveryNSteps(interval_steps=permanent_every))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
            preservation_policy=None if read_only else preservation.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=not read_only,  # a trainer clears leftovers of a save killed mid-write
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
        meta = {**meta, "checksums": checksums(state)}
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_iterator.get_state()))
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> tuple[Any, dict]:
        """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs), and the data position."""
        restored = self._restore_items(step, state=ocp.args.StandardRestore(abstract_state),
                                       meta=ocp.args.JsonRestore())
        verify_checksums(restored["state"], restored["meta"].get("checksums"), f"{self.directory}/{step}")
        data_state = self.data_state(step) if data_iterator is not None else None
        if data_state is not None:
            data_iterator.set_state(data_state)
        elif data_iterator is not None and step > 0 and not restored["meta"].get("imported_from"):
            # A trained step is whole or not used: without its data position it would replay the first batches.
            raise CheckpointDamaged(f'{self.directory}/{step}: no "data" item (the data position is missing).')
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
        verify_checksums({"params": restored["params"]}, self.restore_meta(step).get("checksums"),
                         f"{self.directory}/{step}")
        return restored["params"]

    def data_state(self, step: int) -> dict | None:
        """The data position saved with a step (None for an imported checkpoint, which has none).

        Every process saves the same position (the next step of the global batch order), so any
        process's file serves every process, whatever their number now: Grain's handler would look for
        this process's own `process_i-of-N.json`, which a changed process count does not have."""
        files = sorted((self.directory / str(step) / "data").glob("process_*-of-*.json"))
        try:
            states = [json.loads(f.read_text()) for f in files]
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointDamaged(f"{self.directory}/{step}/data: a data position does not decode ({e}).") from e
        if not states:
            return None
        if any(s != states[0] for s in states[1:]):
            raise CheckpointDamaged(f"{self.directory}/{step}/data: processes saved different data positions {states}")
        return states[0]

    def state_metadata(self, step: int) -> Any:
        """The saved state's tree of array metadata (shapes, dtypes), read without reading any array."""
        state_dir = self.directory / str(step) / "state"
        if not state_dir.exists():
            raise CheckpointDamaged(f'{self.directory}/{step}: no "state" item (its directory is missing).')
        # Through the handler: Orbax's Checkpointer.metadata logs these same exceptions and returns no tree,
        # which would hide a transient storage error as damage.
        try:
            metadata = ocp.StandardCheckpointHandler().metadata(state_dir)
        except (FileNotFoundError, KeyError, ValueError) as e:  # _METADATA missing, short of keys, undecodable
            if storage_status(e) in TRANSIENT_STATUS:
                raise
            raise CheckpointDamaged(f"{state_dir}: its array metadata does not read back ({type(e).__name__}: "
                                    f"{str(e)[:300]}).") from e
        tree = getattr(metadata, "tree", metadata)
        if not jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape")):
            raise CheckpointDamaged(f"{state_dir}: its metadata describes no arrays.")
        return tree

    def restore_meta(self, step: int) -> dict:
        return self._restore_items(step, meta=ocp.args.JsonRestore())["meta"]

    def _restore_items(self, step: int, **items: Any) -> Any:
        """Orbax's restore of these items; a missing item, or a JSON file of it that does not decode, is damage."""
        missing = [name for name in items if not (self.directory / str(step) / name).exists()]
        if missing:
            raise CheckpointDamaged(f"{self.directory}/{step}: no {' or '.join(missing)} item (directory missing).")
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # Orbax reads meta and _METADATA with json.loads
            raise CheckpointDamaged(f"{self.directory}/{step}: a file does not decode ({type(e).__name__}: {e}).") \
                from e

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

