"""TPU fit report on paper: AOT-compile presets for TPU topologies from a CPU machine.

    python benchmarks/aot_report.py [--presets llama-1b llama3-8b] [--topologies v5e-8 v5p-8 v6e-8] [--set key=value ...]

Prints a Markdown table for BENCHMARKS.md. Needs libtpu (pip install -e '.[tpu]').
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["llama-1b", "llama3-8b"])
    parser.add_argument("--topologies", nargs="+", default=["v5e-8", "v5p-8", "v6e-8"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every preset (repeatable)")
    args = parser.parse_args()

    from jaxtrain.config import load_config
    from jaxtrain.train.aot import _size, compile_for_topology

    print("| preset | topology | batch x seq | HBM per chip | of | fits | model FLOPs/step | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        for topo in args.topologies:
            cfg = load_config(preset, args.overrides)
            try:
                r = compile_for_topology(cfg, topo)
            except Exception as e:  # report, keep going
                print(f"| {preset} | {topo} | | failed: {type(e).__name__}: {str(e)[:80]} | | | | |", flush=True)
                continue
            print(
                f"| {preset} | {r.topology} ({r.num_chips} chips) | {cfg.train.batch_size} x {cfg.data.seq_len} | "
                f"{_size(r.bytes_per_chip)} | {_size(r.hbm_per_chip)} | {'yes' if r.fits else 'no'} | "
                f"{r.model_flops_per_step:.2e} | {r.compile_seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
