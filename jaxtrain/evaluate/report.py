"""Where metrics go: metrics.jsonl, evals.jsonl, TensorBoard events and a PNG of eval curves.

Only process 0 writes. TensorBoard events are written with tensorboardX (no
TensorFlow needed): `tensorboard --logdir RUN_DIR/tensorboard`.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from etils import epath


def _plain(value):
    return value.item() if isinstance(value, (np.generic, np.ndarray)) else value


class MetricsWriter:
    def __init__(self, run_dir: pathlib.Path, enabled: bool = True):
        self.run_dir = epath.Path(run_dir)
        self.enabled = enabled
        self._tb = None

    def _tensorboard(self):
        if self._tb is None and "://" in str(self.run_dir):
            return None  # tensorboardX writes local files; on gs:// the JSONL files are the record
        if self._tb is None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tb

    def write(self, record: dict, file: str = "metrics.jsonl") -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in record.items()}
        append_line(self.run_dir / file, json.dumps(clean))
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
        plot_evals(self.run_dir / "evals.jsonl", self.run_dir / "eval.png")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def append_line(path: epath.Path, line: str) -> None:
    """Append to a local file; object stores (gs://) cannot append, so rewrite the object there."""
    if "://" not in str(path):
        with path.open("a") as f:
            f.write(line + "\n")
        return
    existing = path.read_text() if path.exists() else ""
    path.write_text(existing + line + "\n")


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
