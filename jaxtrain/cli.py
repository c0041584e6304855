"""`jaxtrain` command line: a thin layer over the library, one function per stage.

    jaxtrain run      --config demo            whole pipeline: prepare, tokenizer, tokenize, train, eval, sample
    jaxtrain prepare  --config demo            corpus assembly and cleaning
    jaxtrain tokenizer --config demo           train the sentencepiece tokenizer
    jaxtrain tokenize --config demo            write ArrayRecord token shards (TFDS builder)
    jaxtrain train    --config demo            train (resumes from the latest checkpoint)
    jaxtrain eval     --run-dir runs/demo      held-out loss of a checkpoint
    jaxtrain sample   --run-dir runs/demo --prompt "def "
    jaxtrain compile  --config llama-1b --topology v5p-8   AOT compile for a TPU slice: fits in HBM?
    jaxtrain plan     --flops 1e21 --topology v5p-8       a budget to a config that fits (AOT-searched memory)
    jaxtrain export   --run-dir runs/demo --out hf-demo     a Hugging Face model directory
    jaxtrain import-hf path/to/llama --run-dir runs/cont --config llama-1b
    jaxtrain scaling  sweep --config tiny --base-run runs/tiny --budgets 1e11 3e11
    jaxtrain ablate   --run-dir runs/demo --target stdlib_docs   curation variants compared on a trusted source
    jaxtrain mixture  --run-dir runs/demo --target stdlib_docs   proxies on sampled mixtures, a mixing law, a proposal

Every command names its run with `--run-dir RUN` (scaling sweep: `--base-run`) and resolves its config
once (`jaxtrain.runconfig.resolve`); the old `jaxtrain eval RUN` and `jaxtrain export RUN OUT` still
work and say so.

Overrides are trailing `key=value` pairs: `jaxtrain train --config tiny model.num_layers=4`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time
import traceback

from jaxtrain import cli_scaling  # standard library only at import, like this module
from jaxtrain.hardware import ASSUMED_MFU, apply_tpu_overlap_flags, quiet_libtpu_off_tpu  # stdlib only: no JAX

# Library imports happen inside the command functions, on purpose: the simulated-device
# flag must be in XLA_FLAGS before JAX is first imported (_simulated_devices_default),
# and `jaxtrain --help` stays instant.


def _simulated_devices_default() -> None:
    """On a CPU-only host, default to an 8-device simulated mesh (must precede JAX import)."""
    if "jax" in sys.modules:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags and os.environ.get("JAXTRAIN_SIMULATED_DEVICES", "8") != "0":
        n = os.environ.get("JAXTRAIN_SIMULATED_DEVICES", "8")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _legacy_positionals(args: argparse.Namespace, *names: str) -> None:
    """The old spellings (`jaxtrain eval RUN`, `jaxtrain export RUN OUT`): leading arguments without `=`
    fill `names` (--run-dir, --out); the command still runs, and a note names the new form."""
    missing = [name for name in names if not getattr(args, name, None)]
    given = []
    while args.overrides and "=" not in args.overrides[0]:
        if not missing:
            flag = "--" + names[0].replace("_", "-")
            raise SystemExit(f"give the run directory once: {args.overrides[0]!r} or {flag} {getattr(args, names[0])!r}")
        name, value, args.overrides = missing.pop(0), args.overrides[0], args.overrides[1:]
        setattr(args, name, value)
        given.append((name, value))
    if given:
        old = " ".join(value for _, value in given)
        new = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in given)
        args.deprecated = f"`jaxtrain {args.command} {old}` is deprecated; use `jaxtrain {args.command} {new}`"


def _resolve(args: argparse.Namespace, *, run_attr: str = "run_dir", data: bool = False, **options):
    """The command's config, resolved once (jaxtrain.runconfig.Resolved): every command's one entry.
    `data`: the command runs data stages, so their inputs are checked too."""
    from jaxtrain import runconfig

    if run_attr == "run_dir":
        _legacy_positionals(args, "run_dir")
    args.resolved_run = getattr(args, run_attr, None)  # where main() writes a traceback
    resolved = runconfig.resolve(args.config, args.overrides, args.resolved_run, data=data, **options)
    args.resolved_run = resolved.run
    return resolved


def _prepare_through(through: str):
    def cmd(args) -> None:
        from jaxtrain import pipeline

        pipeline.prepare(_resolve(args, data=True), through=through)
    return cmd


cmd_prepare, cmd_tokenizer, cmd_tokenize = (_prepare_through(s) for s in ("curation", "tokenizer", "shards"))


def cmd_train(args) -> None:
    from jaxtrain import pipeline
    from jaxtrain.parallel.distributed import initialize_from_env

    initialize_from_env(args.coordinator, args.num_processes, args.process_id, args.heartbeat_timeout, args.distributed)
    pipeline.train(_resolve(args, data=True), prepare_data=True, max_steps_this_run=args.max_steps)


def cmd_eval(args) -> None:
    from jaxtrain import pipeline

    pipeline.evaluate_checkpoint(_resolve(args), step=args.step)


def cmd_sample(args) -> None:
    from jaxtrain import pipeline

    pipeline.sample(_resolve(args), None, args.prompt, args.step, tokens=args.tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def cmd_run(args) -> None:
    from jaxtrain import pipeline

    pipeline.run(_resolve(args, data=True), max_steps_this_run=args.max_steps)


def cmd_compile(args) -> int:
    from jaxtrain.train.aot import compile_for_topology

    cfg = _resolve(args).cfg
    report = compile_for_topology(cfg, args.topology, num_slices=args.num_slices, assumed_mfu=args.mfu)
    print(report.render())
    if not report.fits:
        from jaxtrain import plan

        print(f"suggestion      {plan.suggest_fit(cfg, args.topology, report.bytes_per_chip)}")
    return 0 if report.fits else 3


def cmd_launch(args) -> int:
    from jaxtrain.parallel.launch import launch

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SystemExit("jaxtrain launch: give the command to run after --, e.g. -- train --config tiny")
    return launch(argv, args.num_processes, args.devices_per_process, args.max_restarts, args.heartbeat_timeout)


def cmd_export(args) -> None:
    from jaxtrain.export.handoff import export_run

    _legacy_positionals(args, "run_dir", "out")
    if not args.run_dir or not args.out:
        raise SystemExit("jaxtrain export: give --run-dir RUN and --out OUT")
    resolved = _resolve(args, require_recorded=True)
    out = export_run(resolved.cfg, resolved.run, pathlib.Path(args.out), args.step)
    print(f"[export] {args.format} checkpoint written to {out} (model.safetensors, config.json, tokenizer, README.md)")


def cmd_card(args) -> None:
    from jaxtrain.export import card

    resolved = _resolve(args, require_recorded=True)
    written = card.write(resolved.cfg, resolved.run, pathlib.Path(args.out) if args.out else None)
    print(f"[card] {args.out or resolved.run}/{card.CARD_MD} and {card.CARD_JSON}: {len(written['sources'])} sources, "
          f"{len(written['unknown'])} things it cannot vouch for" + "".join(f"\n[card]   unknown: {u}" for u in written["unknown"]))


def cmd_import_hf(args) -> None:
    from jaxtrain.export.handoff import import_hf

    resolved = _resolve(args)
    cfg = import_hf(pathlib.Path(args.hf_dir), resolved.cfg, resolved.run, tuple(args.ignore_field or ()),
                    repo_id=args.repo_id)
    print(f"[import-hf] {args.hf_dir} -> {resolved.run} (step-0 checkpoint, {cfg.model.num_layers} layers, "
          f"vocab {cfg.model.vocab_size}); point data.sources at your corpus and run "
          f"`jaxtrain train --run-dir {resolved.run}`")


def cmd_ablate(args) -> None:
    from jaxtrain import ablate

    base = _resolve(args, data=True, require_recorded=True)
    out = pathlib.Path(args.out) if args.out else pathlib.Path(str(base.run)) / "ablations"
    results = ablate.run_ablation(base, args.target, out, args.variants, args.seeds, args.steps)
    print((out / "ablation.md").read_text() + f"[ablate] {len(results)} runs; table {out / 'ablation.md'}, "
          f"plot {out / 'ablation.png'}")


def cmd_mixture(args) -> None:
    from jaxtrain import mixture

    base = _resolve(args, data=True, require_recorded=True)
    out = pathlib.Path(args.out) if args.out else pathlib.Path(str(base.run)) / "mixture"
    fit = mixture.run_mixture(base, args.target, out, args.proxies, args.steps, args.seeds, args.proxy_overrides,
                              args.max_epochs, args.sample_seed)
    print((out / "mixture.md").read_text() + f"[mixture] {len(fit['proxies'])} proxies; report {out / 'mixture.md'}, "
          f"plot {out / 'mixture.png'}, proposal {out / 'proposal.yaml'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxtrain", description="Pretrain language models with JAX: data to base model.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_text: str, run_dir_help: str = "run directory (default: the config's run_dir)",
            description: str | None = None, run_dir_required: bool = False, positional: tuple[str, str] | None = None):
        p = sub.add_parser(name, help=help_text, description=description or help_text)
        if positional:
            p.add_argument(positional[0], help=positional[1])
        p.add_argument("--config", "-c", default=None, help="preset name in configs/ or a YAML path (default: demo, "
                       "or the run directory's saved config)")
        p.add_argument("--run-dir", metavar="RUN", default=None, required=run_dir_required, help=run_dir_help)
        # (also takes the old spelling `jaxtrain CMD RUN ...`: cli._legacy_positionals)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. "
                       "model.num_layers=4")
        p.set_defaults(fn=fn)
        return p

    add("prepare", cmd_prepare, "assemble and clean the corpus (exact dedup, length and quality rules)")
    add("tokenizer", cmd_tokenizer, "train the sentencepiece tokenizer on the cleaned corpus")
    add("tokenize", cmd_tokenize, "encode the corpus into ArrayRecord token shards with a TFDS builder")
    for name, fn, text in (
        ("train", cmd_train, "train the model; resumes from the latest checkpoint in the run directory"),
        ("run", cmd_run, "the whole pipeline: prepare, tokenizer, tokenize, train, eval, sample"),
    ):
        p = add(name, fn, text)
        p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in this invocation")
        if name == "train":
            g = p.add_argument_group("multi-process (jax.distributed)")
            g.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() with "
                           "auto-detection (Cloud TPU VMs, SLURM)")
            g.add_argument("--coordinator", default=None, help="host:port of process 0 (or JAXTRAIN_COORDINATOR)")
            g.add_argument("--num-processes", type=int, default=None)
            g.add_argument("--process-id", type=int, default=None)
            g.add_argument("--heartbeat-timeout", type=int, default=100,
                           help="seconds before a dead peer makes the others exit with an error")
    p = add("compile", cmd_compile, "AOT-compile the train step for a TPU topology (needs the [tpu] extra): "
            "HBM per chip, FLOPs per step, fits or not")
    p.add_argument("--topology", required=True, help="accelerator type (v5e-8, v5p-128, v4-32, v6e-16) or v5e:2x4")
    p.add_argument("--num-slices", type=int, default=1, help="multislice: number of slices (set mesh.dcn to match)")
    p.add_argument("--mfu", type=float, default=ASSUMED_MFU,
                   help=f"MFU assumed for the projected tokens/s per chip (default {ASSUMED_MFU}: MaxText's "
                        "published dense TPU results are 45-71%%)")
    p = sub.add_parser("launch", help="run N local processes of a command under jax.distributed, restarting on failure",
                       description="Local multi-process launcher (CPU, gloo): development and tests of multi-host runs.")
    p.add_argument("--num-processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=4, help="simulated CPU devices in each process")
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--heartbeat-timeout", type=int, default=30)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then a jaxtrain subcommand and its arguments")
    p.set_defaults(fn=cmd_launch)
    p = add("export", cmd_export, "write a run's checkpoint as a Hugging Face model (safetensors + config + "
            "tokenizer + model card)", "the run directory to export (it has config.yaml)",
            description="Export for transformers: LlamaForCausalLM or GPT2LMHeadModel.")
    p.add_argument("--out", metavar="OUT", default=None, help="output directory")
    p.add_argument("--format", choices=["hf"], default="hf")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p = add("card", cmd_card, "write the run's data card (DATA_CARD.md, data_card.json): sources, licenses, "
            "curation, tokens, decontamination, provenance chain", "the run directory (it has config.yaml)",
            run_dir_required=True)
    p.add_argument("--out", metavar="DIR", default=None, help="output directory (default: the run directory)")
    p = add("import-hf", cmd_import_hf, "start a run from a Hugging Face Llama checkpoint (continued pretraining)",
            "the new run directory", description="Create a run directory whose step-0 checkpoint holds a HF Llama "
            "model's weights; data, optimizer and mesh settings come from --config.", run_dir_required=True,
            positional=("hf_dir", "directory with config.json, *.safetensors and tokenizer.json (with "
                        "tokenizer_config.json) or tokenizer.model"))
    p.add_argument("--ignore-field", action="append", metavar="FIELD",
                   help="a config.json field you know does not change the computation (unknown fields are refused)")
    p.add_argument("--repo-id", metavar="ORG/NAME", default=None, help="the base model's Hugging Face Hub id, for the "
                   "exported card's base_model (default: read from a Hub cache path or config.json)")
    p = add("ablate", cmd_ablate, "train one small model per curation variant and compare them on a trusted source",
            description="Curation ablations: the same model, tokenizer and token budget on the raw, heuristic and "
            "classifier-filtered versions of the run's sources; held-out bits per byte on --target (never trained on).",
            run_dir_required=True)
    p.add_argument("--target", required=True, metavar="SOURCE", help="the trusted source to score on (held out)")
    p.add_argument("--variants", nargs="+", default=["raw", "heuristics", "classifier"],
                   help="curation variants (default: raw heuristics classifier)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds per variant (default: 0 1)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the run's train.steps)")
    p.add_argument("--out", default=None, help="output directory (default: RUN/ablations)")
    p = add("mixture", cmd_mixture, "propose a data mixture: one small proxy per mixture sampled around the natural "
            "shares (within the full run's repetition bound), a mixing law fitted to their held-out bits per byte on "
            "--target (never trained on), checked on held-out proxies, and the mixture it predicts best",
            run_dir_required=True)
    p.add_argument("--target", required=True, metavar="SOURCE", help="the source to score on (held out)")
    p.add_argument("--proxies", type=int, default=16, help="sampled mixtures, one proxy each (default 16; >= 3)")
    p.add_argument("--steps", type=int, default=None, help="training steps per proxy (default: the run's train.steps)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds per proxy (default: 0)")
    p.add_argument("--proxy-overrides", nargs="+", metavar="key=value", default=(), help="proxies only (e.g. a smaller model)")
    p.add_argument("--max-epochs", type=float, default=4.0, help="repetition bound: most epochs of a source at the "
                   "full run (default 4, or the natural mixture's when higher)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the sampled mixtures")
    p.add_argument("--out", default=None, help="output directory (default: RUN/mixture)")
    cli_scaling.add_parsers(sub, _resolve)
    p = add("eval", cmd_eval, "held-out loss of a checkpoint, with the unigram baseline")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p = add("sample", cmd_sample, "generate text from a checkpoint")
    p.add_argument("--prompt", action="append", help="prompt text; repeat for several")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--tokens", type=int, default=None, help="new tokens per prompt")
    p.add_argument("--temperature", type=float, default=None, help="0 for greedy")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus: keep tokens up to this probability mass")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _write_traceback(args: argparse.Namespace) -> str:
    """The current exception's full traceback, in RUN/logs (or the temp dir when that fails)."""
    from jaxtrain.rundir import RunDir

    text = traceback.format_exc()
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    run = getattr(args, "resolved_run", None) or getattr(args, "run_dir", None) or getattr(args, "run", None)
    if run:
        try:
            path = RunDir(run).logs / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return str(path)
        except OSError:
            pass
    try:
        fd, path = tempfile.mkstemp(prefix="jaxtrain-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    except OSError:
        return "not written (no writable place)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `train key=value --max-steps 8 key=value`: argparse stops collecting overrides at the first option;
    # the ones after it come back unrecognized and join the others.
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _simulated_devices_default()
    # Collective/compute overlap on TPU (hardware.TPU_OVERLAP_FLAGS), read by libtpu when JAX starts; `compile`
    # sets them on any host so the AOT program is the one the slice would run. A user's LIBTPU_INIT_ARGS wins.
    apply_tpu_overlap_flags(force=args.fn in (cmd_compile, cli_scaling.cmd_plan))
    quiet_libtpu_off_tpu()  # libtpu installed on a laptop (AOT, or JAX probing backends): no metadata warnings
    from jaxtrain.errors import ConfigError, JaxtrainError, expected_failure
    from jaxtrain.runlock import RunDirBusy
    from jaxtrain.train.preemption import EXIT_PREEMPTED, Preempted
    from jaxtrain.train.resume import IncompatibleCheckpoint, TrainingDiverged

    try:
        code = args.fn(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except RunDirBusy as e:  # nothing written: no traceback file in another writer's run directory
        print(f"error: {e}", file=sys.stderr)
        return 2
    except IncompatibleCheckpoint as e:
        print(f"checkpoint error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        print(f"[train] {e} (exit code {EXIT_PREEMPTED})", file=sys.stderr)
        return EXIT_PREEMPTED
    except TrainingDiverged as e:
        print(f"[train] {e}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:  # Ctrl-C outside the trainer's own save-and-stop: finished work is kept
        print(f"interrupted: rerun the same `jaxtrain {args.command}` to continue (finished stages, proxies and "
              "committed checkpoints are reused)", file=sys.stderr)
        return 130
    except Exception as e:  # expected failures (JaxtrainError, disk full, permissions, missing files): one line
        line = str(e) if isinstance(e, JaxtrainError) else expected_failure(e)
        if line is None:
            raise  # a bug: the full traceback
        print(f"error: {line} (traceback: {_write_traceback(args)})", file=sys.stderr)
        return 2
    if getattr(args, "deprecated", None):  # after the work: a refused command's error stays one line
        print(f"note: {args.deprecated}", file=sys.stderr)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
