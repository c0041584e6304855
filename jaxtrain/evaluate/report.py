"""Where metrics go: metrics.jsonl, evals.jsonl, TensorBoard events and a PNG of eval curves.

Only process 0 writes. TensorBoard events are written with tensorboardX (no
TensorFlow needed): `tensorboard --logdir RUN_DIR/tensorboard`.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from etils import epath


def _plain(value):
    return value.item() if isinstance(value, (np.generic, np.ndarray)) else value


class MetricsWriter:
    """JSONL metrics (and TensorBoard) in the run directory.

    Object stores (gs://) cannot append, so there the files are kept in memory and the objects
    rewritten at most every REMOTE_FLUSH_S seconds, at every eval and at `flush()` (the loop
    flushes at each checkpoint), instead of once per line."""

    REMOTE_FLUSH_S = 60.0

    def __init__(self, run_dir: pathlib.Path, enabled: bool = True):
        self.run_dir = epath.Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._remote = "://" in str(self.run_dir)
        self._lines: dict[str, list[str]] = {}  # remote files: full contents
        self._dirty: set[str] = set()
        self._last_flush = time.monotonic()

    def _append(self, file: str, line: str) -> None:
        path = self.run_dir / file
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
            (self.run_dir / file).write_text("\n".join(self._lines[file]) + "\n")
        self._dirty.clear()
        self._last_flush = time.monotonic()

    def _tensorboard(self):
        if self._tb is None and self._remote:
            return None  # tensorboardX writes local files; on gs:// the JSONL files are the record
        if self._tb is None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tb

    def write(self, record: dict, file: str = "metrics.jsonl") -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in record.items()}
        self._append(file, json.dumps(clean))
        step = int(clean.get("step", 0))
        tb = self._tensorboard()
        if tb is None:
            return
        for key, value in clean.items():
            if key not in ("step", "time", "kind") and isinstance(value, (int, float)) and value == value:
                tb.add_scalar(key if "/" in key else f"train/{key}", value, step)
        tb.flush()

    def write_eval(self, record: dict, kind: str) -> None:
        """Eval results: into evals.jsonl (in-loop and offline alike) and the eval plot."""
        if not self.enabled:
            return
        self.write({**record, "kind": kind}, file="evals.jsonl")
        self.flush()
        plot_evals(self.run_dir / "evals.jsonl", self.run_dir / "eval.png")

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()


def plot_evals(evals_path: pathlib.Path, png_path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in evals_path.read_text().splitlines() if line.strip()]
    rows = sorted((r for r in rows if r.get("kind") == "in-loop"), key=lambda r: r["step"]) or rows
    keys = sorted({k for r in rows for k in r if k.startswith("eval/") and (k.endswith("/loss") or k.endswith("bpb"))})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in keys:
        ax = axes[1] if key.endswith("bpb") else axes[0]
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), "o-", label=key.replace("eval/", ""), lw=2 if key.count("/") == 1 else 1)
    axes[0].set(xlabel="step", ylabel="held-out loss (nats/token)", title="held-out loss")
    axes[1].set(xlabel="step", ylabel="bits per byte", title="bits per byte")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with epath.Path(png_path).open("wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
