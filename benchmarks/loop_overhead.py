"""Where the CLI loop's time goes next to the bare compiled step (issue #14's tiny CPU case).

    taskset -c 0,1 python benchmarks/loop_overhead.py [--steps 200] [--out loop.json] [--set key=value ...]

Model: 4 layers, width 128, 4 heads, MLP 512, vocabulary 512 (1.18M parameters), batch 12 x 64, one
CPU device, the tiny preset's data (prepared into a temporary run directory on first use). Figures,
all per step (medians):
  data_ms         drawing a batch from the Grain iterator (shuffle, mix, pack, batch)
  to_global_ms    placing it on the mesh (`Trainer.to_global`)
  bare_synced_ms  the compiled train step alone, waiting for its loss every step
  bare_async_ms   the compiled step alone, dispatched back to back (what the loop could reach)
  loop_ms         `jaxtrain.train.loop.run`, as the CLI trains (log every 50 steps, no eval/checkpoint): the
                  median of its log windows' step times (metrics.jsonl), so start-up (resume attempt, data
                  iterator, checkpointer) and compilation stay out, as they do from the bare figures
  loop_with_startup_ms  the whole `run` call divided by the steps (the figure before issue 19);
                  startup_s and compile_s are what separates the two
  loop_over_bare  loop_ms / bare_synced_ms (target: <= 1.05)
Run it on a quiet machine: on a shared one the figures move by tens of percent.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

SIZE = ["model.num_layers=4", "model.embed_dim=128", "model.mlp_dim=512", "model.num_heads=4", "model.num_kv_heads=4",
        "train.batch_size=12", "mesh.data=1", "train.log_every=50", "checkpoint.every_steps=1000000",
        "eval.every_steps=1000000"]


def measure(prepared: pathlib.Path, steps: int, overrides: list[str] = ()) -> dict:
    """Figures for a run directory that holds prepared tiny data (data/ and tokenizer/)."""
    import jax

    from jaxtrain.config import load_config
    from jaxtrain.data import loader
    from jaxtrain.train import loop as loop_lib
    from jaxtrain.train.trainer import build_trainer

    cfg = load_config("tiny", SIZE + [f"train.steps={steps}", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        run = pathlib.Path(tmp) / "run"
        for part in ("data", "tokenizer"):
            shutil.copytree(prepared / part, run / part)
        trainer = build_trainer(cfg, run, devices=jax.devices()[:1])
        it, _ = loader.training_batches(cfg.data, trainer.run, batch_size=trainer.batch_size, rows=trainer.rows)
        n = min(steps, 50)
        t = time.perf_counter()
        batches = [next(it) for _ in range(n)]
        data_s = (time.perf_counter() - t) / n
        for b in batches:
            del b["source_ids"]
        t = time.perf_counter()
        placed = [trainer.to_global(b) for b in batches]
        put_s = (time.perf_counter() - t) / n
        state = trainer.init_state()
        step = trainer.train_step.lower(state, placed[0]).compile()
        for b in placed[:5]:
            state, m = step(state, b)
            float(m["loss"])
        synced = []
        for b in placed:
            t = time.perf_counter()
            state, m = step(state, b)
            float(m["loss"])
            synced.append(time.perf_counter() - t)
        t = time.perf_counter()
        for b in placed:
            state, m = step(state, b)
        float(m["loss"])
        async_s = (time.perf_counter() - t) / n
        del state
        t = time.perf_counter()
        result = loop_lib.run(trainer, max_steps_this_run=steps)
        loop_total_s = time.perf_counter() - t
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        windows = [x["step_time_s"] for x in lines if "step_time_s" in x]
        loop_s = statistics.median(windows)  # the loop's own clock, per log window (start-up and compile excluded)
        startup_s = loop_total_s - statistics.mean(windows) * steps - result["compile_s"]
    bare = statistics.median(synced)
    return {"data_ms": data_s * 1e3, "to_global_ms": put_s * 1e3, "bare_synced_ms": bare * 1e3,
            "bare_async_ms": async_s * 1e3, "loop_ms": loop_s * 1e3, "loop_over_bare": loop_s / bare,
            "loop_with_startup_ms": loop_total_s / steps * 1e3, "startup_s": startup_s, "compile_s": result["compile_s"],
            "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=None)
    parser.add_argument("--prepared", default=None, help="a run directory with tiny data (default: prepare one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    from jaxtrain import pipeline
    from jaxtrain.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        prepared = pathlib.Path(args.prepared) if args.prepared else pathlib.Path(tmp) / "prepared"
        if not args.prepared:
            pipeline.prepare(load_config("tiny"), prepared)
        figures = measure(prepared, args.steps, args.overrides)
    print(json.dumps(figures, indent=2))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
