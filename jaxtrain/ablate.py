"""Curation ablations, the way FineWeb and DCLM chose their pipelines: the same small model, tokenizer
and token budget trained on curation variants of one run's sources, each scored on the same held-out
text of a source the user trusts.

    jaxtrain ablate --run-dir RUN --target SOURCE [--variants raw heuristics classifier] [--seeds 0 1]

Variants (of every source but the target):
  raw         the extracted text as read: no quality rules, no language or URL filter, no dedup, no
              length floor or letter-share rule (PII replacement and max_chars stay as configured)
  heuristics  the run's rules, language and URL filters, exact and near dedup; no learned classifier
  classifier  heuristics and dedup, then the run's learned quality classifier (data.quality_classifier;
              when the run has none, one with the target as its reference and default settings)

The target is never trained on in any variant (`train: false`: curated, tokenized and evaluated only);
it is the classifier's positives in the `classifier` variant, as DCLM's reference data was. Every
variant is decontaminated against the target's held-out split (13-gram overlap, data.decontaminate),
so no variant is rewarded for having seen the evaluation text. The score is bits per byte on the base
run's own target shards (the same tokens for every variant, tokenized with the base run's tokenizer,
which every variant reuses), plus the base run's tasks when it has them. Each variant and seed is an
ordinary run directory under OUT, so a killed ablation resumes (finished ones are read from
`ablation.jsonl`, a half-trained one continues from its checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import statistics
from typing import Sequence

from matplotlib.figure import Figure

from jaxtrain import pipeline
from jaxtrain.config import RunConfig
from jaxtrain.data import clean, shards
from jaxtrain.data.config import DataConfig, QualityClassifierConfig
from jaxtrain.errors import ConfigError
from jaxtrain.evaluate import evaluation, tasks
from jaxtrain.evaluate.evaluator import Evaluator
from jaxtrain.rundir import RunDir
from jaxtrain.runconfig import Resolved
from jaxtrain.train.trainer import load_params
from jaxtrain.utils import log

VARIANTS = ("raw", "heuristics", "classifier")
RESULTS = "ablation.jsonl"


def variant_data(base: DataConfig, variant: str, target: str, decontaminate: str, seed: int) -> DataConfig:
    """The data section of one variant (see the module docstring)."""
    sources = []
    for s in base.sources:
        if s.name == target:
            sources.append(dataclasses.replace(s, train=False))
        elif variant == "raw":
            sources.append(dataclasses.replace(s, filters=(), languages=(), min_language_score=0.0, url_blocklist=""))
        else:
            sources.append(s)
    qc = (base.quality_classifier if base.quality_classifier.reference
          else QualityClassifierConfig(reference=(target,), keep_fraction=0.5))
    common = {"sources": tuple(sources), "decontaminate": (*base.decontaminate, decontaminate), "shuffle_seed": seed,
              "quality_classifier": qc if variant == "classifier" else QualityClassifierConfig()}
    if variant == "raw":
        return dataclasses.replace(base, **common, exact_dedup=False, near_dedup=False, min_chars=1,
                                   min_alpha_fraction=0.0)
    return dataclasses.replace(base, **common)


def variant_config(base: Resolved, variant: str, seed: int, target: str, out_dir: pathlib.Path,
                   decontaminate: str, steps: int | None) -> RunConfig:
    cfg = base.cfg
    steps = steps or cfg.train.steps
    return dataclasses.replace(
        cfg, name=f"{cfg.name}-ablate-{variant}-s{seed}", run_dir=str(out_dir / f"{variant}-s{seed}"),
        data=variant_data(cfg.data, variant, target, decontaminate, seed),
        tokenizer=dataclasses.replace(cfg.tokenizer, model_file=str(base.run.tokenizer)),  # one tokenizer for all
        train=dataclasses.replace(cfg.train, seed=seed, steps=steps, log_every=max(1, min(cfg.train.log_every, steps))),
        checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=steps, keep=1),
        eval=dataclasses.replace(cfg.eval, every_steps=steps),
    )


def _target_text(base: Resolved, target: str, out_dir: pathlib.Path) -> str:
    """The target's held-out documents (the base run's curated split), for the variants' decontamination."""
    path = out_dir / f"{target}.held_out.jsonl"
    with path.open("w") as f:
        for part in clean.split_files(base.run.clean, target, "validation"):
            f.write(part.read_text())
    return str(path)


def score(cfg: RunConfig, base_run: RunDir, target: str) -> dict:
    """Bits per byte (and loss) of a variant's final checkpoint on the base run's target shards, plus the
    base run's tasks."""
    session, params, step = load_params(cfg, RunDir(cfg.run_dir), None)
    evaluator = Evaluator(session)
    held = evaluation.evaluate(evaluator.eval_step, params, base_run, [target], seq_len=session.seq_len,
                               batch_size=session.batch_size, rows=session.rows, max_batches=1 << 30,
                               to_global=session.to_global)  # the whole held-out split: exact bits per byte
    out = {"step": step, "target_bpb": held[f"eval/{target}/bpb"], "target_loss": held[f"eval/{target}/loss"]}
    for path in tasks.builtin_task_paths(base_run):
        if path.exists():
            out[f"tasks/{path.stem}/acc_norm"] = tasks.evaluate_task(evaluator.scorer, params, evaluator.tokenizer,
                                                                     tasks.read_task(path))["acc_norm"]
    return out


def _corpus(cfg: RunConfig, target: str) -> dict:
    """What the variant trained on: kept documents and tokens of its trained sources, and the epochs its
    token budget spent on them."""
    run = RunDir(cfg.run_dir)
    report, counts = json.loads(run.curation_report.read_text()), shards.token_counts(run)
    trained = [s.name for s in cfg.data.sources if s.train]
    tokens = sum(counts[shards.split_name("train", s)]["tokens"] for s in trained)
    budget = cfg.train.steps * cfg.tokens_per_step
    return {"kept_docs": sum(report[s]["kept_docs"] for s in trained), "train_tokens": tokens,
            "budget_tokens": budget, "epochs": round(budget / max(tokens, 1), 3)}


def run_ablation(base: Resolved, target: str, out_dir: pathlib.Path, variants: Sequence[str] = VARIANTS,
                 seeds: Sequence[int] = (0, 1), steps: int | None = None) -> list[dict]:
    """Train and score every (variant, seed) not yet in OUT/ablation.jsonl; write the table and plot."""
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"--variants: unknown {bad}; choose from {list(VARIANTS)}.")
    if steps is not None and steps <= 0:
        raise ConfigError(f"--steps: must be positive, got {steps} (leave it out for the run's train.steps).")
    if target not in base.cfg.data.source_names:
        raise ConfigError(f"--target: {target!r} is not a source of {base.run}; choose one of "
                          f"{base.cfg.data.source_names}.")
    results_path = out_dir / RESULTS
    steps = steps or base.cfg.train.steps
    earlier = {(r["target"], r["budget_tokens"]) for r in read_results(results_path)}
    budget = steps * base.cfg.tokens_per_step
    if earlier - {(target, budget)}:
        (t, b), = sorted(earlier)[:1]
        raise ConfigError(f"--out {out_dir}: holds an ablation on target {t!r} with a budget of {b} tokens; this one "
                          f"is on {target!r} with {budget} ({steps} steps). Give another --out.")
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.prepare(base, through="shards")  # the target's shards and the tokenizer every variant shares
    decontaminate = _target_text(base, target, out_dir)
    done = {(r["variant"], r["seed"]) for r in read_results(results_path)}
    for variant in variants:
        for seed in seeds:
            if (variant, seed) in done:
                continue
            cfg = variant_config(base, variant, seed, target, out_dir, decontaminate, steps)
            first = RunDir(out_dir / f"{variant}-s{seeds[0]}")
            run = RunDir(cfg.run_dir)
            if seed != seeds[0] and first.data.exists() and not run.data.exists():  # curation is seed-independent
                for src, dst in ((first.data, run.data), (first.tokenizer_dir, run.tokenizer_dir)):
                    shutil.copytree(src, dst)
            log(f"[ablate] {variant}, seed {seed}: {cfg.train.steps} steps of {cfg.tokens_per_step} tokens")
            pipeline.train(cfg, cfg.run_dir, prepare_data=True)
            record = {"variant": variant, "seed": seed, "target": target, **_corpus(cfg, target),
                      **score(cfg, base.run, target)}
            log(f"[ablate] {variant}, seed {seed}: {target} {record['target_bpb']:.4f} bits per byte")
            with results_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
    results = read_results(results_path)
    write_summary(results, out_dir)
    return results


def read_results(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(results: list[dict]) -> list[dict]:
    """Per variant: mean target bpb, the seed-to-seed spread (max - min), and the change against raw."""
    rows = []
    for variant in [v for v in VARIANTS if any(r["variant"] == v for r in results)]:
        mine = [r for r in results if r["variant"] == variant]
        bpb = [r["target_bpb"] for r in mine]
        rows.append({"variant": variant, "seeds": len(mine), "target_bpb": statistics.mean(bpb),
                     "spread": max(bpb) - min(bpb), "kept_docs": mine[0]["kept_docs"],
                     "train_tokens": mine[0]["train_tokens"], "epochs": mine[0]["epochs"]})
    raw = next((r for r in rows if r["variant"] == "raw"), None)
    for r in rows:
        r["vs_raw"] = r["target_bpb"] - raw["target_bpb"] if raw else None
    return rows


def write_summary(results: list[dict], out_dir: pathlib.Path) -> None:
    rows = summarize(results)
    target = results[0]["target"] if results else ""
    lines = [f"# Curation ablation: held-out bits per byte on `{target}` (lower is better)", "",
             "| variant | seeds | bpb (mean) | seed spread | vs raw | kept docs | train tokens | epochs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs = f"{r['vs_raw']:+.4f}" if r["vs_raw"] is not None else ""
        spread = f"{r['spread']:.4f}" if r["seeds"] > 1 else "n/a (one seed)"
        lines.append(f"| {r['variant']} | {r['seeds']} | {r['target_bpb']:.4f} | {spread} | {vs} "
                     f"| {r['kept_docs']} | {r['train_tokens']} | {r['epochs']} |")
    (out_dir / "ablation.md").write_text("\n".join(lines) + "\n")
    fig = Figure(figsize=(6, 3.5))  # no pyplot: no global backend state
    ax = fig.subplots()
    for i, r in enumerate(rows):
        ax.bar(i, r["target_bpb"], color="#9bb7d4")
        ax.scatter([i] * r["seeds"], [x["target_bpb"] for x in results if x["variant"] == r["variant"]],
                   color="k", zorder=3, s=12)
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows])
    ax.set_ylabel(f"{target} held-out bits per byte")
    if rows:
        lo = min(x["target_bpb"] for x in results)
        ax.set_ylim(lo * 0.97, max(x["target_bpb"] for x in results) * 1.01)
    fig.suptitle("Curation ablation (bars: mean; dots: seeds)")
    fig.tight_layout()
    fig.savefig(out_dir / "ablation.png", dpi=90)
