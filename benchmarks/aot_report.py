"""TPU fit report on paper: AOT-compile presets for TPU topologies from a CPU machine.

    python benchmarks/aot_report.py [--presets llama-1b llama3-8b] [--topologies v5e-8 v5p-8 v6e-8] [--set key=value ...]
        [--loss-chunks 0 256] [--mfu 0.45]

Prints a Markdown table for BENCHMARKS.md. Needs libtpu (pip install -e '.[tpu]').
`--loss-chunks 0 256` compiles each row with the whole [B, L, V] logits (0) and with the
chunked cross-entropy, to show the HBM the chunking saves.
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
    parser.add_argument("--loss-chunks", nargs="+", type=int, default=None,
                        help="train.loss_chunk values to compile each row with (0: whole logits)")
    parser.add_argument("--mfu", type=float, default=None, help="assumed MFU for the projected tokens/s")
    args = parser.parse_args()

    from jaxtrain import hardware
    from jaxtrain.config import load_config
    from jaxtrain.train.aot import _size, compile_for_topology

    mfu = args.mfu if args.mfu is not None else hardware.ASSUMED_MFU
    print(f"| preset | topology | batch x seq | loss chunk | attention | HBM per chip | of | spare | fits (5% spare) "
          f"| tok/s/chip at {mfu:.0%} MFU | model FLOPs/step | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        for topo in args.topologies:
            for chunk in args.loss_chunks or [None]:
                extra = [] if chunk is None else [f"train.loss_chunk={chunk}"]
                cfg = load_config(preset, args.overrides + extra)
                try:
                    r = compile_for_topology(cfg, topo, assumed_mfu=mfu)
                except Exception as e:  # report, keep going
                    print(f"| {preset} | {topo} | | | | failed: {type(e).__name__}: {str(e)[:80]} | | | | | | |",
                          flush=True)
                    continue
                print(
                    f"| {preset} | {r.topology} ({r.num_chips} chips) | {cfg.train.batch_size} x {cfg.data.seq_len} | "
                    f"{cfg.train.loss_chunk or 'whole'} | {r.attention} | {_size(r.bytes_per_chip)} | "
                    f"{_size(r.hbm_per_chip)} | {_size(r.spare_bytes)} | {'yes' if r.fits else 'no'} | "
                    f"{r.projected_tokens_per_s_per_chip:,.0f} | {r.model_flops_per_step:.2e} | {r.compile_seconds:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
