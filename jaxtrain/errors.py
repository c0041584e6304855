"""Expected failures: the command line prints these as one line and exits 2, never a traceback."""

from __future__ import annotations

import errno
import os

# What to do about the operating-system failures a command can meet on its files and run directory.
_FIXES = {
    errno.ENOSPC: "the disk is full: free space or use a run directory on a larger disk, then rerun the same "
                  "command (finished stages and committed checkpoints are kept)",
    errno.EDQUOT: "the disk quota is exhausted: free space or use a run directory elsewhere, then rerun",
    errno.EACCES: "fix the permissions, or use a path you can read and write",
    errno.EPERM: "fix the permissions, or use a path you can read and write",
    errno.EROFS: "the file system is read-only: use a run directory on a writable disk",
    errno.ENOENT: "check the path (a missing tokenizer or checkpoint: run the stage that makes it first)",
    errno.ENOTDIR: "a part of the path is a file, not a directory: check the path",
    errno.EISDIR: "the path is a directory where a file is needed: check the path",
}
_DISK_FULL_MARKERS = ("No space left on device", "RESOURCE_EXHAUSTED")

class JaxtrainError(Exception):
    """An expected failure whose message names the file, key or value and the fix."""


class ConfigError(JaxtrainError, ValueError):
    """A config problem, phrased as key + what is wrong + how to fix it."""


def check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ok: the one-liner every config section uses."""
    if not ok:
        raise ConfigError(message)


def expected_failure(exc: BaseException) -> str | None:
    """One line for an expected failure found in `exc` or what caused it (disk full, permission
    denied, a missing file or directory), naming the path and the fix; None for anything else.
    Libraries wrap OS errors (Beam, TensorStore, Orbax), hence the walk down the causes and, for
    errors that lost their errno on the way, the look at the messages."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not seen for seen in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno in _FIXES:
            where = f"{e.filename}: " if e.filename else ""
            return f"{where}{e.strerror or os.strerror(e.errno)}; {_FIXES[e.errno]}."
    for e in chain:
        if isinstance(e, FileNotFoundError) and e.errno is None:  # raised with a message naming the path
            return str(e)
        lines = [line for line in str(e).splitlines() if any(m in line for m in _DISK_FULL_MARKERS)]
        if lines:
            return f"{lines[0].strip()[:300]}; {_FIXES[errno.ENOSPC]}."
    return None
