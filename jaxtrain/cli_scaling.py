"""The planning commands of the command line: `jaxtrain plan` (a budget and a topology to a config that fits)
and `jaxtrain scaling plan|sweep|fit`. Standard library only at import, like `jaxtrain.cli`: the library
is imported inside each command."""

from __future__ import annotations

import argparse
import functools
import json
import pathlib

from jaxtrain.hardware import ASSUMED_MFU, CHIPS


def cmd_plan(args) -> int:
    from jaxtrain import plan

    out = pathlib.Path(args.out or f"plan-{args.topology.replace(':', '-')}.yaml")
    result = plan.run(args.config, args.topology, out, flops=args.flops, chip_hours=args.chip_hours,
                      tokens=args.tokens, mfu=args.mfu, constants_file=args.constants, compile=not args.no_compile)
    print(plan.render_summary(result))
    print(f"[plan] config written to {out}: jaxtrain compile --config {out} --topology {args.topology}")
    return 3 if result.fits is False else 0


def cmd_scaling(args, resolve) -> None:
    if args.action == "plan":
        from jaxtrain import plan  # the arithmetic only: no training stack, so it answers in seconds

        if not (args.flops or (args.chip_hours and args.chip)):
            raise SystemExit("jaxtrain scaling plan: give --flops, or --chip-hours with --chip (and --mfu)")
        print(plan.law_summary(args.flops, args.chip_hours, args.chip, args.mfu, args.constants))
        return
    from jaxtrain import pipeline, sweep

    if args.action == "sweep":
        if args.legacy_run_dir:
            if args.base_run:
                raise SystemExit("jaxtrain scaling sweep: give the base run once, with --base-run")
            args.base_run = args.legacy_run_dir
            args.deprecated = (f"`jaxtrain scaling sweep --run-dir {args.base_run}` is deprecated; use "
                               f"`jaxtrain scaling sweep --base-run {args.base_run}`")
        base = resolve(args, run_attr="base_run", data=True, default="tiny")
        pipeline.prepare(base)
        ladder = [tuple(int(x) for x in rung.split("x")) for rung in args.ladder] if args.ladder else sweep.DEFAULT_LADDER
        results = sweep.run_sweep(base, pathlib.Path(args.out), args.budgets, ladder)
        print(f"[sweep] {len(results)} runs in {args.out}/sweep.jsonl")
        if len(results) >= 5:
            print(json.dumps(sweep.fit_sweep(results, pathlib.Path(args.out)), indent=2))
    else:
        results = sweep.read_results(pathlib.Path(args.input))
        print(json.dumps(sweep.fit_sweep(results, pathlib.Path(args.out)), indent=2))
        print(f"[fit] plot: {pathlib.Path(args.out) / 'scaling_fit.png'}")


def add_parsers(sub, resolve) -> None:
    """`plan` and `scaling` on the command line's subparsers; `resolve` is `cli._resolve`."""
    p = sub.add_parser("plan", help="a budget and a TPU topology to a config that fits: model size from the scaling "
                       "law, batch and learning rate from published rules, remat and microbatches by AOT compile",
                       description="Writes a config (base: --config) and prints the projected step time and tokens/s.")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=float, help="training compute C in FLOPs")
    budget.add_argument("--chip-hours", type=float, help="hours of the topology's chips (at --mfu)")
    budget.add_argument("--tokens", type=float, help="training tokens (the model is sized compute-optimally for them)")
    p.add_argument("--topology", required=True, help="accelerator type (v5p-8, v5e-16, v4-32, v6e-8) or v5e:2x4")
    p.add_argument("--config", "-c", default="llama-1b", help="preset or YAML the plan builds on: vocabulary, "
                   "sequence length, dtypes, data (default: llama-1b)")
    p.add_argument("--out", default=None, help="the config to write (default: plan-TOPOLOGY.yaml)")
    p.add_argument("--mfu", type=float, default=ASSUMED_MFU, help=f"MFU assumed for chip-hours and the projection "
                   f"(default {ASSUMED_MFU})")
    p.add_argument("--constants", help="scaling_fit.json from `jaxtrain scaling fit` (default: Epoch AI's constants)")
    p.add_argument("--no-compile", action="store_true", help="skip the AOT memory search (seconds instead of minutes)")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("scaling", help="scaling laws: plan a compute-optimal run, sweep a ladder, fit L(N, D)",
                       description="plan: N and D for a budget; sweep: IsoFLOP ladder of real runs; fit: law constants.")
    p.add_argument("action", choices=["plan", "sweep", "fit"])
    p.add_argument("--flops", type=float, help="plan: training compute C in FLOPs")
    p.add_argument("--chip-hours", type=float, help="plan: budget in chip-hours (with --chip and --mfu)")
    p.add_argument("--chip", choices=sorted(CHIPS), help="plan: chip whose bf16 peak sets the FLOPs")
    p.add_argument("--mfu", type=float, default=0.4, help="plan: assumed model FLOPs utilization")
    p.add_argument("--constants", help="plan: scaling_fit.json from `scaling fit` (default: Epoch AI constants)")
    p.add_argument("--config", "-c", default=None, help="sweep: base preset (default: tiny, or the base run's "
                   "saved config)")
    p.add_argument("--base-run", metavar="RUN", default=None, help="sweep: the base run directory, whose prepared data and "
                   "tokenizer every rung shares (default: the config's run_dir)")
    p.add_argument("--run-dir", dest="legacy_run_dir", default=None, help=argparse.SUPPRESS)  # old name of --base-run
    p.add_argument("--budgets", type=float, nargs="+", default=[3e12, 1e13], help="sweep: FLOP budgets")
    p.add_argument("--ladder", nargs="+", metavar="LAYERSxWIDTH", help="sweep: model sizes, e.g. 1x16 2x32 (default: 5 rungs)")
    p.add_argument("--out", default="runs/scaling", help="sweep/fit: output directory")
    p.add_argument("--input", default="runs/scaling/sweep.jsonl", help="fit: sweep results")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(fn=functools.partial(cmd_scaling, resolve=resolve))
