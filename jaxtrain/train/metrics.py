"""Where metrics go: JSONL files in the run directory and TensorBoard events.

Only process 0 writes. TensorBoard events are written with tensorboardX (no
TensorFlow needed): `tensorboard --logdir RUN_DIR/tensorboard`.
"""

from __future__ import annotations

import json
import time

import numpy as np
from etils import epath
from tensorboardX import SummaryWriter

from jaxtrain.rundir import RunDir


def _plain(value):
    return value.item() if isinstance(value, (np.generic, np.ndarray)) else value


class MetricsWriter:
    """JSONL metrics (and TensorBoard) in the run directory.

    Object stores (gs://) cannot append, so there the files are kept in memory and the objects
    rewritten at most every REMOTE_FLUSH_S seconds, at every eval and at `flush()` (the loop
    flushes at each checkpoint), instead of once per line."""

    REMOTE_FLUSH_S = 60.0

    def __init__(self, run_dir: str | RunDir, enabled: bool = True):
        self.run = RunDir(run_dir)
        self.enabled = enabled
        self.tags: dict = {}  # added to every line (e.g. the resume count)
        self._tb = None
        self._remote = self.run.is_remote
        self._lines: dict[str, list[str]] = {}  # remote files: full contents
        self._dirty: set[str] = set()
        self._last_flush = time.monotonic()

    def _append(self, path: epath.Path, line: str) -> None:
        file = str(path)
        if not self._remote:
            with path.open("a") as f:
                f.write(line + "\n")
            return
        if file not in self._lines:
            self._lines[file] = path.read_text().splitlines() if path.exists() else []
        self._lines[file].append(line)
        self._dirty.add(file)
        if time.monotonic() - self._last_flush >= self.REMOTE_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        for file in sorted(self._dirty):
            epath.Path(file).write_text("\n".join(self._lines[file]) + "\n")
        self._dirty.clear()
        self._last_flush = time.monotonic()

    def _tensorboard(self):
        if self._tb is None and self._remote:
            return None  # tensorboardX writes local files; on gs:// the JSONL files are the record
        if self._tb is None:
            self._tb = SummaryWriter(str(self.run.tensorboard))
        return self._tb

    def write(self, record: dict, path: epath.Path | None = None) -> None:
        """One JSON line into `path` (default: the run's metrics.jsonl) and its scalars into TensorBoard."""
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in {**record, **self.tags}.items()}
        self._append(path or self.run.metrics, json.dumps(clean))
        step = int(clean.get("step", 0))
        tb = self._tensorboard()
        if tb is None:
            return
        for key, value in clean.items():
            if key not in ("step", "time", "kind", *self.tags) and isinstance(value, (int, float)) and value == value:
                tb.add_scalar(key if "/" in key else f"train/{key}", value, step)
        tb.flush()

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()

