"""Data stages as library calls: corpus -> clean -> tokenizer -> token shards.

Each stage writes into the run directory and is skipped when its output is
already there, so re-running a pipeline resumes instead of redoing work.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import time

from etils import epath

from jaxtrain.config import ConfigError, RunConfig
from jaxtrain.data import clean, corpus, shards
from jaxtrain.data import tokenizer as tok
from jaxtrain.utils import Progress, log


def clean_dir(run_dir: pathlib.Path) -> pathlib.Path:
    return run_dir / "data" / "clean"


def tfds_dir(run_dir: pathlib.Path) -> pathlib.Path:
    return run_dir / "data" / "tfds"


def tokenizer_path(run_dir: pathlib.Path) -> pathlib.Path:
    return run_dir / "tokenizer" / tok.MODEL_NAME


def check_sources(cfg: RunConfig) -> None:
    """Refuse sources that cannot produce anything, before any work starts."""
    for i, s in enumerate(cfg.data.sources):
        if s.type == "files" and not [p for p in glob.glob(os.path.expanduser(s.path), recursive=True) if os.path.isfile(p)]:
            raise ConfigError(
                f"data.sources[{i}].path: glob {s.path!r} (source {s.name!r}) matches no files; "
                "check the path or quote the glob."
            )


def prepare_corpus(cfg: RunConfig, run_dir: pathlib.Path) -> dict:
    out_dir = clean_dir(run_dir)
    report_path = out_dir / "report.json"
    if report_path.exists():
        log(f"[prepare] reusing cleaned corpus in {out_dir}")
        return json.loads(report_path.read_text())
    check_sources(cfg)
    tmp_dir = out_dir.with_name("clean.partial")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    rules = clean.CleanRules(
        min_chars=cfg.data.min_chars,
        max_chars=cfg.data.max_chars,
        min_alpha_fraction=cfg.data.min_alpha_fraction,
        min_alnum_fraction_code=cfg.data.min_alnum_fraction_code,
    )
    seen: dict[str, str] = {}
    reports: dict[str, clean.SourceReport] = {}
    start = time.perf_counter()
    for s in cfg.data.sources:
        docs = corpus.embedded_source(s.name) if s.type == "embedded" else corpus.file_source(s.name, s.path, s.text_field)
        report = reports[s.name] = clean.SourceReport()
        progress = Progress(f"[prepare] {s.name}", unit="docs")
        with (tmp_dir / f"{s.name}.train.jsonl").open("w", encoding="utf-8") as train_f, (
            tmp_dir / f"{s.name}.validation.jsonl"
        ).open("w", encoding="utf-8") as eval_f:
            for split, record in clean.clean_source(
                progress.wrap(docs), s.content, rules, seen, report, cfg.data.eval_fraction, s.max_bytes
            ):
                (eval_f if split == "validation" else train_f).write(json.dumps(record, ensure_ascii=False) + "\n")
        progress.close(
            f"{report.input_docs} in, {report.kept_docs} kept ({report.kept_bytes / 1e6:.1f} MB, "
            f"{report.eval_docs} held out), {report.duplicate_docs} duplicates, "
            f"{sum(report.removed.values())} filtered {dict(report.removed)}, {report.unreadable_docs} unreadable, "
            f"{report.capped_docs} over max_bytes"
        )
        if report.kept_docs - report.eval_docs <= 0 or report.eval_docs <= 0:
            raise ConfigError(
                f"data.sources: source {s.name!r} kept {report.kept_docs} documents ({report.eval_docs} held out); "
                "both the train and validation splits need at least one. Raise max_bytes or loosen data.min_chars."
            )
    result = clean.write_report(reports, tmp_dir / "report.json")
    if out_dir.exists():
        epath.Path(out_dir).rmtree()
    tmp_dir.rename(out_dir)
    log(f"[prepare] done in {time.perf_counter() - start:.1f}s -> {out_dir}")
    return result


def prepare_tokenizer(cfg: RunConfig, run_dir: pathlib.Path) -> pathlib.Path:
    path = tokenizer_path(run_dir)
    if path.exists():
        log(f"[tokenizer] reusing {path} (fingerprint {tok.fingerprint(path)})")
        return path
    start = time.perf_counter()
    if cfg.tokenizer.model_file:
        path = tok.install_tokenizer(cfg.tokenizer.model_file, path.parent)
    else:
        files = [clean_dir(run_dir) / f"{s.name}.train.jsonl" for s in cfg.data.sources]
        log(f"[tokenizer] training {cfg.tokenizer.model_type} vocab={cfg.tokenizer.vocab_size} on <= {cfg.tokenizer.sample_bytes / 1e6:.1f} MB")
        path = tok.train_tokenizer(
            files,
            path.parent,
            vocab_size=cfg.tokenizer.vocab_size,
            model_type=cfg.tokenizer.model_type,
            byte_fallback=cfg.tokenizer.byte_fallback,
            sample_bytes=cfg.tokenizer.sample_bytes,
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
