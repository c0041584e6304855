"""Where metrics go: JSONL files in the run directory, TensorBoard events, and optionally Weights & Biases.

Only process 0 writes. TensorBoard events are written with tensorboardX (no
TensorFlow needed): `tensorboard --logdir RUN_DIR/tensorboard`. With
`log.wandb: true` the same records go to a W&B run whose id is kept in the run
directory, so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Callable

import jax
import numpy as np
from etils import epath
from matplotlib.figure import Figure
from tensorboardX import SummaryWriter

from jaxtrain.config import LogConfig, RunConfig, to_dict
from jaxtrain.rundir import RunDir


def _plain(value):
    return value.item() if isinstance(value, (np.generic, np.ndarray)) else value


class WandbSink:
    """A Weights & Biases run fed the numeric fields of every metrics record."""

    def __init__(self, log_cfg: LogConfig, run: RunDir, name: str, config: dict):
        import wandb  # optional dependency (the [wandb] extra): only runs with log.wandb=true import it

        if run.wandb_run_id.exists():
            run_id = run.wandb_run_id.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:16]
            run.wandb_run_id.write_text(run_id)
        self.run = wandb.init(project=log_cfg.wandb_project, entity=log_cfg.wandb_entity or None, name=name,
                              id=run_id, resume="allow", mode=log_cfg.wandb_mode, config=config,
                              dir=None if run.is_remote else str(run.wandb_dir))  # wandb writes local files only

    def write(self, record: dict, step: int) -> None:
        scalars = {k if "/" in k else f"train/{k}": v for k, v in record.items()
                   if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if scalars:
            self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsWriter:
    """JSONL metrics (and TensorBoard) in the run directory.

    Object stores (gs://) cannot append, so there the files are kept in memory and the objects
    rewritten at most every REMOTE_FLUSH_S seconds, at every eval and at `flush()` (the loop
    flushes at each checkpoint), instead of once per line."""

    REMOTE_FLUSH_S = 60.0

    def __init__(self, run_dir: str | RunDir, enabled: bool = True, wandb: WandbSink | None = None):
        self.run = RunDir(run_dir)
        self.enabled = enabled
        self.tags: dict = {}  # added to every line (e.g. the resume count)
        self._wandb = wandb
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
        if self._wandb is not None:
            self._wandb.write(clean, step)
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
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None

    @classmethod
    def for_run(cls, cfg: RunConfig, run_dir: str | RunDir) -> "MetricsWriter":
        """The run's writer: process 0 writes, to W&B as well when cfg.log.wandb is on."""
        run, enabled = RunDir(run_dir), jax.process_index() == 0
        sink = WandbSink(cfg.log, run, cfg.name, to_dict(cfg)) if (enabled and cfg.log.wandb) else None
        return cls(run, enabled=enabled, wandb=sink)



def device_memory_gib() -> float | None:
    """Peak bytes in use on this process's busiest device, where the backend reports it (GPU, TPU; not CPU)."""
    stats = [d.memory_stats() for d in jax.local_devices()]
    peaks = [st.get("peak_bytes_in_use", st.get("bytes_in_use", 0)) for st in stats if st]
    return max(peaks) / 2**30 if peaks else None


def latest_per_step(path: epath.Path, keep: Callable[[dict], bool] = lambda record: True) -> dict[int, dict]:
    """The JSONL records of a metrics file that `keep` accepts, by step; a step written again (after a resume,
    or a later `jaxtrain eval`) is its latest line. {} when the file does not exist."""
    path = epath.Path(path)
    if not path.exists():
        return {}
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["step"]: r for r in records if keep(r)}


def plot_training(run: str | RunDir) -> None:
    """train.png beside eval.png: the training loss (each log window's mean), the learning rate and the
    throughput per step, from metrics.jsonl (a step logged again after a resume: its latest line)."""
    run = RunDir(run)
    rows = latest_per_step(run.metrics, lambda r: "loss" in r and "lr" in r)
    if not rows:
        return
    steps = sorted(rows)
    fig = Figure(figsize=(15, 4))  # no pyplot: no global backend state, safe in notebooks and threads
    axes = fig.subplots(1, 3)
    for ax, key, label in ((axes[0], "loss", "training loss (window mean, nats/token)"),
                           (axes[1], "lr", "learning rate"), (axes[2], "tokens_per_s", "tokens/s")):
        ax.plot(steps, [rows[s].get(key) or np.nan for s in steps], "-", lw=1.5)
        ax.set(xlabel="step", ylabel=label, title=label.split(" (")[0])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with epath.Path(run.train_plot).open("wb") as f:
        fig.savefig(f, dpi=100, format="png")
