"""Data stages as library calls: corpus -> clean -> tokenizer -> token shards.

Each stage writes into the run directory and is skipped when its output is
already there, so re-running a pipeline resumes instead of redoing work.
"""

from __future__ import annotations

import json
import pathlib
import time

from etils import epath

from jaxtrain.config import ConfigError, RunConfig
from jaxtrain.data import corpus, curate, curation_report, shards
from jaxtrain.data import tokenizer as tok
from jaxtrain.utils import log


def clean_dir(run_dir: pathlib.Path) -> pathlib.Path:
    return run_dir / "data" / "clean"


def tfds_dir(run_dir: pathlib.Path) -> pathlib.Path:
    return run_dir / "data" / "tfds"


def tokenizer_path(run_dir: pathlib.Path) -> pathlib.Path:
    return run_dir / "tokenizer" / tok.MODEL_NAME


def check_sources(cfg: RunConfig) -> None:
    """Refuse sources that cannot produce anything, before any work starts."""
    for i, s in enumerate(cfg.data.sources):
        if s.type == "files" and not corpus.source_files(s.path):
            raise ConfigError(
                f"data.sources[{i}].path: glob {s.path!r} (source {s.name!r}) matches no files; "
                "check the path or quote the glob."
            )
    for pattern in cfg.data.decontaminate:
        if not corpus.source_files(pattern):
            raise ConfigError(f"data.decontaminate: glob {pattern!r} matches no files; check the path.")


def prepare_corpus(cfg: RunConfig, run_dir: pathlib.Path) -> dict:
    """Curate (Beam pipeline) into data/clean: per-source JSONL splits, ledger and report."""
    out_dir = epath.Path(clean_dir(run_dir))
    report_path = out_dir / "report.json"
    if report_path.exists():
        log(f"[prepare] reusing cleaned corpus in {out_dir}")
        return json.loads(report_path.read_text())
    check_sources(cfg)
    tmp_dir = out_dir.with_name("clean.partial")
    if tmp_dir.exists():
        tmp_dir.rmtree()
    start = time.perf_counter()
    workers = cfg.data.curate_workers
    log(f"[prepare] curating {len(cfg.data.sources)} sources (Apache Beam, {workers} worker(s))")
    curate.run(cfg, tmp_dir, workers)
    names = [s.name for s in cfg.data.sources]
    report = curation_report.build(sorted(tmp_dir.glob(f"{curate.LEDGER}-*.jsonl")), names)
    curation_report.write(report, tmp_dir)
    for s in cfg.data.sources:
        r = report[s.name]
        if r["accounted"] != r["input_docs"]:
            raise RuntimeError(f"curation lost documents of {s.name!r}: {r['accounted']} accounted of {r['input_docs']}")
        log(f"[prepare] {s.name}: {r['input_docs']} in, {r['kept_docs']} kept ({r['kept_bytes'] / 1e6:.1f} MB, "
            f"{r['eval_docs']} held out), duplicates {r['duplicates']}, removed {sum(r['removed'].values())} "
            f"{_top(r['removed'])}, unreadable {sum(r['unreadable'].values())}, {r['capped_docs']} over max_bytes, "
            f"{r['pii_replaced']} PII replaced")
        if r["kept_docs"] - r["eval_docs"] <= 0 or r["eval_docs"] <= 0:
            raise ConfigError(
                f"data.sources: source {s.name!r} kept {r['kept_docs']} documents ({r['eval_docs']} held out); "
                f"both the train and validation splits need at least one (see {tmp_dir / 'report.md'}). "
                "Raise max_bytes, loosen data.min_chars or the source's filters."
            )
    if out_dir.exists():
        out_dir.rmtree()
    tmp_dir.rename(out_dir)
    log(f"[prepare] done in {time.perf_counter() - start:.1f}s -> {out_dir} (report.md, report.png)")
    return report


def _top(counter: dict, n: int = 4) -> dict:
    return dict(sorted(counter.items(), key=lambda kv: -kv[1])[:n])


def prepare_tokenizer(cfg: RunConfig, run_dir: pathlib.Path) -> pathlib.Path:
    path = tokenizer_path(run_dir)
    if path.exists():
        log(f"[tokenizer] reusing {path} (fingerprint {tok.fingerprint(path)})")
        return path
    start = time.perf_counter()
    if cfg.tokenizer.model_file:
        path = tok.install_tokenizer(cfg.tokenizer.model_file, path.parent)
    else:
        files = [f for s in cfg.data.sources for f in curate.split_files(clean_dir(run_dir), s.name, "train")]
        log(f"[tokenizer] training {cfg.tokenizer.model_type} vocab={cfg.tokenizer.vocab_size} "
            f"on <= {cfg.tokenizer.sample_bytes / 1e6:.1f} MB")
        path = tok.train_tokenizer(
            files,
            path.parent,
            vocab_size=cfg.tokenizer.vocab_size,
            model_type=cfg.tokenizer.model_type,
            byte_fallback=cfg.tokenizer.byte_fallback,
            sample_bytes=cfg.tokenizer.sample_bytes,
            special_tokens=cfg.tokenizer.special_tokens,
        )
    sp = tok.load(path)
    if sp.vocab_size() > cfg.model.vocab_size:
        raise ConfigError(
            f"tokenizer: {path} has {sp.vocab_size()} pieces but model.vocab_size={cfg.model.vocab_size}; "
            f"set model.vocab_size={sp.vocab_size()}."
        )
    log(f"[tokenizer] {path} in {time.perf_counter() - start:.1f}s (fingerprint {tok.fingerprint(path)})")
    return path


def prepare_shards(cfg: RunConfig, run_dir: pathlib.Path) -> dict:
    data_dir = tfds_dir(run_dir)
    counts_path = data_dir / "token_counts.json"
    if counts_path.exists():
        log(f"[tokenize] reusing token shards in {data_dir}")
        return json.loads(counts_path.read_text())
    start = time.perf_counter()
    log("[tokenize] encoding the cleaned corpus into ArrayRecord shards (TFDS builder)")
    counts = shards.build_shards(
        clean_dir(run_dir), tokenizer_path(run_dir), [s.name for s in cfg.data.sources], data_dir
    )
    total = sum(c["tokens"] for c in counts.values())
    nbytes = sum(c["bytes"] for c in counts.values())
    log(f"[tokenize] {total:,} tokens from {nbytes / 1e6:.1f} MB in {time.perf_counter() - start:.1f}s")
    for name, c in counts.items():
        log(f"[tokenize]   {name:32s} {c['docs']:6d} docs {c['tokens']:10,d} tokens")
    return counts


def tasks_dir(run_dir: pathlib.Path) -> pathlib.Path:
    return run_dir / "tasks"


def prepare_tasks(cfg: RunConfig, run_dir: pathlib.Path) -> None:
    """Built-in downstream tasks from the held-out documents (see jaxtrain.evaluate.tasks)."""
    from jaxtrain.evaluate.tasks import BUILTIN_TASKS, build_tasks

    out = tasks_dir(run_dir)
    if all((out / f"{name}.jsonl").exists() for name in BUILTIN_TASKS):
        return
    paths = build_tasks(clean_dir(run_dir), out, cfg.eval.task_examples, cfg.data.shuffle_seed)
    sizes = {name: len(p.read_text().splitlines()) for name, p in paths.items()}
    log(f"[tasks] built from held-out text: {sizes} examples in {out}")


def prepare_all(cfg: RunConfig, run_dir: pathlib.Path) -> None:
    prepare_corpus(cfg, run_dir)
    prepare_tokenizer(cfg, run_dir)
    prepare_shards(cfg, run_dir)
    prepare_tasks(cfg, run_dir)
