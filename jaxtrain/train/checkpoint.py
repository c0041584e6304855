"""Orbax checkpointing of the whole run state as one composite per step.

Items: `state` (step, params, optimizer state, RNG, stability-guard state;
sharded arrays, async save), `data` (the Grain iterator state, per process),
`meta` (JSON: tokenizer fingerprint, tokens seen, the resolved config, and a
checksum of every array of `state`).
Orbax writes each step into a temporary directory and renames it on commit,
so a failed or interrupted save never touches the previous good checkpoint;
an uncommitted directory is invisible to `all_steps()`.
The checksums (train/checksums.py) are recomputed on every restore, the
parameters-only one too: a mismatch is damage, named by leaf.
Retention is Orbax's preservation policies: the latest N, plus every K-th step
kept for good.
A save whose write fails (read-only or full disk, permissions, a storage error
after its retries) raises `CheckpointWriteFailed`, one line, as soon as the
failure is known: the loop asks after every step (`raise_if_save_failed`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import threading
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from jaxtrain.errors import JaxtrainError
from jaxtrain.rundir import RunDir
from jaxtrain.train import checksums

# TensorStore (Orbax's array store, with its own GCS client) raises a bare ValueError for every failure and
# says which only in the message: absl's status code comes first, "DATA_LOSS: ..." (its Python binding,
# python/tensorstore/status.cc, drops the prefix for INVALID_ARGUMENT alone). HTTP 408, 429 and 5xx from GCS
# reach Python as UNAVAILABLE once its own retries are spent.
_STATUS_PREFIX = re.compile(r"([A-Z_]+): ")
TRANSIENT_STATUS = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"})
DAMAGED_STATUS = frozenset({"DATA_LOSS", "NOT_FOUND", "OUT_OF_RANGE", "FAILED_PRECONDITION"})


class CheckpointDamaged(JaxtrainError, ValueError):
    """A checkpoint whose files are missing, truncated or do not decode: it will not read back, however often."""


class CheckpointSetAsideFailed(JaxtrainError):
    """A damaged or abandoned checkpoint that could not be moved out of the run's way."""


class CheckpointWriteFailed(JaxtrainError):
    """A save that did not commit: training stops; the checkpoints committed before it are kept."""


# TensorStore's file driver names the file and the errno in its message only.
_OS_ERROR_CODE = re.compile(r"\[os_error_code='(\d+)'\]")
_LOCAL_FILE = re.compile(r'local file "([^"]+)"')
_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _OrbaxErrorLog(logging.Filter):
    """Orbax logs a failed save's error with its traceback from each of its threads, hundreds of lines.
    Those records (ERROR and above, from Orbax's code, on its background threads or while a save is waited
    for) leave the console; the latest few go with `CheckpointWriteFailed` into `logs/error-*.log`."""

    def __init__(self):
        super().__init__()
        self.records: collections.deque[str] = collections.deque(maxlen=8)
        self.saving = False  # the main thread is inside a save or a wait for one
        self._format = logging.Formatter("%(levelname)s [%(threadName)s] %(message)s")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        if record.thread == threading.main_thread().ident and not self.saving:
            return True
        self.records.append(self._format.format(record))
        return False

    @contextlib.contextmanager
    def quiet(self):
        self.saving = True
        try:
            yield
        finally:
            self.saving = False


_ORBAX_ERRORS = _OrbaxErrorLog()
logging.getLogger("absl").addFilter(_ORBAX_ERRORS)  # Orbax logs through absl's logger
# Orbax warnings that describe what a reader asked for (read_only=True) or a checkpoint layout it writes itself
# (no step metadata file in a composite written without one): nothing for the user to act on.
_ORBAX_NOISE = ("Given directory is read only=", "Metadata file does not exist:")
logging.getLogger("absl").addFilter(lambda record: not record.getMessage().startswith(_ORBAX_NOISE))


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


def _position_digest(state: dict) -> str:
    """sha256 of a data position (canonical JSON): recorded in meta, checked on restore."""
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_dir(directory: str | pathlib.Path) -> epath.Path:
    """Absolute local path, or a gs:// URI kept as it is (Orbax writes to GCS itself)."""
    path = epath.Path(directory)
    return path if "://" in str(directory) else path.absolute()


def checkpoint_meta(step: int, config: dict, fingerprint: str, tokens_per_step: int, **extra) -> dict:
    """The `meta` item of every checkpoint (trained or imported): what resume checks against."""
    return {"step": step, "tokenizer_fingerprint": fingerprint, "tokens_seen": step * tokens_per_step,
            "config": config, **extra}


def verify_checksums(tree: Any, saved: dict[str, str] | None, where: str) -> None:
    """CheckpointDamaged naming the first array whose bits differ from what was saved (a checkpoint written
    before checksums existed, with none recorded, is trusted)."""
    bad = checksums.mismatch(tree, saved)
    if bad:
        raise CheckpointDamaged(f"{where}: {bad}: its data is damaged.")


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
            # The step's directories are made during save(), where a read-only or full disk fails at once.
            # Made in the background (Orbax's default) a failed mkdir leaves the writer threads waiting
            # for its signal until AsyncOptions.timeout_secs (300 s) run out.
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
            create=not read_only,
            read_only=read_only,
            **({"save_interval_steps": 0} if read_only else {}),  # what Orbax would set itself, with a warning
            preservation_policy=None if read_only else preservation.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=not read_only,  # a trainer clears leftovers of a save killed mid-write
        )
        self.run = RunDir(run)
        self.directory = checkpoint_dir(self.run.checkpoints)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._writing: int | None = None  # the step whose background write has not been seen to succeed
        self._failed = False

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
            source = self.directory / str(step)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    source.rename(target)
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    shutil.move(os.fspath(source), os.fspath(target))  # checkpoints/ on another filesystem
            except OSError as e:
                raise CheckpointSetAsideFailed(
                    f"{source}: could not be moved aside to {target} ({e.strerror or e}); it must leave the run's "
                    f"way before training resumes: move it out of {self.directory} by hand, then rerun.") from e
        _barrier(f"jaxtrain:quarantine-{step}-after")
        self.manager.reload()
        return target

    def save(self, step: int, state: Any, data_iterator: Any | None, meta: dict, force: bool = False) -> bool:
        meta = {**meta, "array_checksums": checksums.checksums(state)}
        data = data_iterator.get_state() if data_iterator is not None else None
        if data is not None:
            meta["data_position_sha256"] = _position_digest(data)
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_FrozenIteratorState(data))
        self.wait()  # Orbax waits for the previous save too: its failure is that step's
        try:
            with _ORBAX_ERRORS.quiet():
                saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:
            raise self._write_failed(step, e) from e
        self._writing = step if saved else None
        return saved

    def raise_if_save_failed(self) -> None:
        """CheckpointWriteFailed once the background write has failed; cheap (a flag read) while it runs."""
        if self._writing is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def _write_failed(self, step: int | None, error: Exception) -> CheckpointWriteFailed:
        """One line: the step's path, the cause found in `error` or what caused it, and the fix."""
        self._failed = True
        chain, e = [], error
        while e is not None and all(e is not seen for seen in chain):
            chain.append(e)
            e = e.__cause__ or e.__context__
        code, cause = None, None
        for e in chain:
            if isinstance(e, OSError) and e.errno:
                code = e.errno
                cause = (e.strerror or os.strerror(code)) + (f" ({e.filename})" if e.filename else "")
                break
            match = _OS_ERROR_CODE.search(str(e))
            if match:
                code, file = int(match.group(1)), _LOCAL_FILE.search(str(e))
                cause = f"{os.strerror(code)} ({file.group(1) if file else 'TensorStore'})"
                break
        if cause is None:
            cause = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        status = next((storage_status(e) for e in chain if storage_status(e)), None)
        if code in _PERMISSION or status == "PERMISSION_DENIED":
            fix = f"fix the permissions of {self.directory}, or train in a writable run directory (--run-dir)"
        elif code in _DISK_FULL or status == "RESOURCE_EXHAUSTED":
            fix = f"the disk is full: free space where {self.directory} lives, then rerun the same command"
        else:
            fix = f"check the storage of {self.directory}, then rerun the same command"
        try:
            # A listing, not Orbax's reload: one process may be failing alone, so nothing here waits for the others.
            committed = sorted(int(p.name) for p in self.directory.iterdir()
                               if p.name.isdigit() and int(p.name) != step)
        except Exception:  # the listing itself may fail the same way: the line says what it knows
            committed = []
        kept = f"; it resumes from step {committed[-1]}, the last committed checkpoint" if committed else ""
        where = self.directory if step is None else f"{self.directory}/{step}"
        failed = CheckpointWriteFailed(f"{where}: the checkpoint could not be written: {cause}; "
                                       f"{fix}{kept}.")
        for record in _ORBAX_ERRORS.records:  # the background threads' own tracebacks, for the log file
            failed.add_note(record)
        _ORBAX_ERRORS.records.clear()
        return failed

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> tuple[Any, dict]:
        """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs), and the data position."""
        restored = self._restore_items(step, state=ocp.args.StandardRestore(abstract_state),
                                       meta=ocp.args.JsonRestore())
        verify_checksums(restored["state"], restored["meta"].get("array_checksums"), f"{self.directory}/{step}")
        data_state = self.data_state(step) if data_iterator is not None else None
        expected = restored["meta"].get("data_position_sha256")
        if data_state is not None and expected is not None and _position_digest(data_state) != expected:
            raise CheckpointDamaged(f"{self.directory}/{step}/data: the data position {data_state} does not match "
                                    "its digest in meta: it is damaged.")
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
        verify_checksums({"params": restored["params"]}, self.restore_meta(step).get("array_checksums"),
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
        except (KeyError, AttributeError) as e:  # Orbax's array metadata decoded, but a field's name is damaged
            raise CheckpointDamaged(f"{self.directory}/{step}: its array metadata is damaged ({type(e).__name__}: "
                                    f"{str(e)[:200]}).") from e

    def wait(self) -> None:
        """Until the save in progress has committed; CheckpointWriteFailed when it has failed."""
        step, self._writing = self._writing, None
        try:
            with _ORBAX_ERRORS.quiet():
                self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_failed(step, e) from e

    def close(self) -> None:
        if self._failed:  # Orbax raises the failed save's error again on close: it is known, and nothing waits
            try:
                with _ORBAX_ERRORS.quiet():
                    self.manager.close()
            except Exception:
                pass
            return
        self.wait()
        self.manager.close()

