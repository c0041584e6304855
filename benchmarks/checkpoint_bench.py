"""Checkpoint cost: how long training is blocked by an async save, the full save, and restore.

    python benchmarks/checkpoint_bench.py [--presets demo gpt2-125m] [--repeats 3]

Builds the real sharded train state for each preset on the 8-device simulated
mesh (no data needed), saves it with the run's Checkpointer (Orbax async),
and restores it onto the same shardings. Medians over repeats.

Checksums (issue 23): the save computes a checksum of every array on the devices
that hold it, and the restore recomputes them; `checksums` is that computation
alone (warm; its one-off compilation is reported beside it), and its share of
the save's blocking time and of the restore (each without it) is the cost.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["demo", "gpt2-125m"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import jax

    from jaxtrain.config import load_config
    from jaxtrain.rundir import RunDir
    from jaxtrain.train.checkpoint import Checkpointer
    from jaxtrain.train.checksums import checksums
    from jaxtrain.train.trainer import build_trainer

    print("| preset | params | state on disk | training blocked (async save) | full save | restore | checksums "
          "(compile) | share of save blocking | share of restore |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        cfg = load_config(preset, ["mesh.dcn=1", "mesh.data=2", "mesh.fsdp=4", "mesh.tensor=1", "train.batch_size=8"])
        session = build_trainer(cfg, "/nonexistent")
        state = session.init_state()
        jax.block_until_ready(state)
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        t = time.perf_counter()
        checksums(state)
        compile_s = time.perf_counter() - t
        blocked, full, restore, sums = [], [], [], []
        root = pathlib.Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
        for r in range(args.repeats):
            ckpt = Checkpointer(RunDir(root / f"r{r}"), keep=2)
            t = time.perf_counter()
            ckpt.save(1, state, None, {"step": 1})
            blocked.append(time.perf_counter() - t)
            ckpt.wait()
            full.append(time.perf_counter() - t)
            t = time.perf_counter()
            restored, _ = ckpt.restore(1, session.abstract_state())
            jax.block_until_ready(restored)
            restore.append(time.perf_counter() - t)
            ckpt.close()
            t = time.perf_counter()
            checksums(state)
            sums.append(time.perf_counter() - t)
        size = sum(f.stat().st_size for f in (root / "r0" / "checkpoints").rglob("*") if f.is_file())
        shutil.rmtree(root)
        med = statistics.median
        print(f"| {preset} | {n_params / 1e6:.1f}M | {size / 2**20:.0f} MiB | {med(blocked) * 1000:.0f} ms | "
              f"{med(full):.2f} s | {med(restore):.2f} s | {med(sums) * 1000:.0f} ms ({compile_s:.2f} s) | "
              f"{med(sums) / (med(blocked) - med(sums)):.1%} | {med(sums) / (med(restore) - med(sums)):.1%} |",
              flush=True)


if __name__ == "__main__":
    main()
