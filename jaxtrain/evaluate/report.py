"""Eval results on disk: evals.jsonl (in-loop and offline alike) and the eval plot."""

from __future__ import annotations

from etils import epath
from matplotlib.figure import Figure

from jaxtrain.rundir import RunDir
from jaxtrain.train.metrics import MetricsWriter, latest_per_step, plot_training


def write_eval(writer: MetricsWriter, record: dict, kind: str) -> None:
    """Append to evals.jsonl (and TensorBoard), then redraw eval.png and train.png."""
    if not writer.enabled:
        return
    writer.write({**record, "kind": kind}, path=writer.run.evals)
    writer.flush()
    plot_evals(writer.run)
    plot_training(writer.run)


def plot_evals(run: RunDir) -> None:
    run = RunDir(run)
    in_loop = latest_per_step(run.evals, lambda r: r.get("kind") == "in-loop")
    rows = [in_loop[s] for s in sorted(in_loop)] or list(latest_per_step(run.evals).values())
    keys = sorted({k for r in rows for k in r if k.startswith("eval/") and (k.endswith("/loss") or k.endswith("bpb"))})
    fig = Figure(figsize=(11, 4))  # no pyplot: no global backend state, safe in notebooks and threads
    axes = fig.subplots(1, 2)
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
    with epath.Path(run.eval_plot).open("wb") as f:
        fig.savefig(f, dpi=100, format="png")
