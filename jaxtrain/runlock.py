"""One writer per run directory: the lock every command that writes a run takes (RunDir.writer_lock).

Writers (train, run, prepare, tokenizer, tokenize, import-hf, the runs of ablate and scaling sweep) hold it
for their whole work; readers (eval, sample, export, the lm-eval adapter) never take it. A second writer is
refused with `RunDirBusy`, one line naming the holder (host, pid, command, since when) and what to do.

Local disks: `fcntl.flock` on the lock file, which the operating system releases when its holder dies, however
it dies; the file also holds the holder (JSON), emptied on release. A lock acquired over a holder record left
behind (its holder was killed) is taken over with a line saying so.

gs:// (no file locks there): a lease object with the holder, refreshed by a daemon thread every HEARTBEAT_S
seconds; a lease whose heartbeat is fresh refuses, one older than STALE_S seconds (or whose holder is a dead
process on this host) is taken over with a line. Without object preconditions two writers starting within
the same second could both write it: each reads it back after writing, and the later one wins.

A pod (several JAX processes on one run) is one writer: process 0 alone takes the lock (`primary`).
Re-entrant within a process: `run` takes it, then `train` and `prepare` inside it take it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable, Iterator

from jaxtrain.errors import JaxtrainError
from jaxtrain.rundir import RunDir
from jaxtrain.utils import log

HEARTBEAT_S = 10.0  # gs:// lease refresh interval
STALE_S = 60.0  # a gs:// lease not refreshed for this long belongs to a dead holder

_held: dict[str, list] = {}  # lock path -> [count, release function]
_guard = threading.Lock()


class RunDirBusy(JaxtrainError):
    """Another writer holds the run directory."""


def _command() -> str:
    argv = list(sys.argv)
    if argv and os.path.basename(argv[0]) in ("jaxtrain", "cli.py", "__main__.py"):
        argv[0] = "jaxtrain"
    return " ".join(argv)[:200] or "python"


def _holder(token: str) -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "command": _command(), "started": now,
            "heartbeat": now, "token": token}


def _alive_here(holder: dict) -> bool | None:
    """Whether the holder's process is alive, when it ran on this host (None: another host, unknown)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def describe(holder: dict | None) -> str:
    if not holder:
        return "a writer that has not recorded itself yet"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    return f"`{holder.get('command', '?')}` (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {since})"


def _parse(text: str) -> dict | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _refuse(run: RunDir, holder: dict | None, extra: str = "") -> RunDirBusy:
    pid = holder.get("pid", "?") if holder else "?"
    return RunDirBusy(f"{run}: run directory in use by {describe(holder)}{extra}; one writer per run directory: "
                      f"wait for it to finish, or stop it (`kill {pid}`: training saves a checkpoint and exits), "
                      "or use another --run-dir.")


def _acquire_local(run: RunDir, path) -> Callable[[], None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _parse(os.pread(fd, 4096, 0).decode(errors="replace"))
        if holder is None:  # the holder is between taking the lock and recording itself
            time.sleep(0.2)
            holder = _parse(os.pread(fd, 4096, 0).decode(errors="replace"))
        os.close(fd)
        raise _refuse(run, holder) from None
    left = _parse(os.pread(fd, 4096, 0).decode(errors="replace"))
    if left:
        log(f"[lock] {path}: taking over from {describe(left)}, which exited without releasing it")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder(uuid.uuid4().hex)).encode(), 0)
    os.fsync(fd)

    def release() -> None:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    return release


def _read_lease(path) -> dict | None:
    try:
        return _parse(path.read_text())
    except FileNotFoundError:
        return None


def _acquire_remote(run: RunDir, path) -> Callable[[], None]:
    current = _read_lease(path)
    if current:
        age = time.time() - float(current.get("heartbeat", 0))
        alive = _alive_here(current)
        if alive is False:
            log(f"[lock] {path}: taking over from {describe(current)}: that process is no longer running")
        elif age < STALE_S:
            raise _refuse(run, current, f", its lease renewed {age:.0f}s ago (taken over when {STALE_S:.0f}s old)")
        else:
            log(f"[lock] {path}: taking over from {describe(current)}: its lease was last renewed {age:.0f}s ago "
                f"(stale after {STALE_S:.0f}s)")
    mine = _holder(uuid.uuid4().hex)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine))
    won = _read_lease(path)
    if not won or won.get("token") != mine["token"]:
        raise _refuse(run, won)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            now = _read_lease(path)
            if not now or now.get("token") != mine["token"]:
                log(f"[lock] {path}: lost the lease to {describe(now)}; no longer renewing it")
                return
            path.write_text(json.dumps({**mine, "heartbeat": time.time()}))

    thread = threading.Thread(target=beat, name="jaxtrain-lease", daemon=True)
    thread.start()

    def release() -> None:
        stop.set()
        thread.join()
        now = _read_lease(path)
        if now and now.get("token") == mine["token"]:
            path.unlink()

    return release


@contextlib.contextmanager
def writer(run: str | os.PathLike | RunDir, primary: bool = True) -> Iterator[None]:
    """Hold the run directory's writer lock for the block (raises RunDirBusy when another writer has it).
    `primary`: False on processes other than process 0 of a pod, which take nothing."""
    run = RunDir(run)
    if not primary:
        yield
        return
    path = run.writer_lock
    key = str(path) if run.is_remote else os.path.abspath(path)
    with _guard:
        if key in _held:
            _held[key][0] += 1
        else:
            release = _acquire_remote(run, path) if run.is_remote else _acquire_local(run, path)
            _held[key] = [1, release]
    try:
        yield
    finally:
        with _guard:
            _held[key][0] -= 1
            if not _held[key][0]:
                _held.pop(key)[1]()
