"""Data stages as library calls: corpus -> clean -> tokenizer -> token shards.

Each stage takes its own config sections and the run directory, writes into
the run directory and is skipped when its output is already there, so
re-running a pipeline resumes instead of redoing work.
"""

from __future__ import annotations

import json
import time

from etils import epath

from jaxtrain.data import clean, corpus, curate, curation_report, shards
from jaxtrain.data import tokenizer as tok
from jaxtrain.data.config import DataConfig, TokenizerConfig
from jaxtrain.errors import ConfigError
from jaxtrain.rundir import RunDir
from jaxtrain.utils import log


def missing_stages(run: RunDir) -> list[str]:
    """The data stages whose output the run directory lacks."""
    run = RunDir(run)
    outputs = {"prepare": run.curation_report, "tokenizer": run.tokenizer, "tokenize": run.token_counts}
    return [stage for stage, path in outputs.items() if not path.exists()]


def check_sources(d: DataConfig) -> None:
    """Refuse sources that cannot produce anything, before any work starts."""
    for i, s in enumerate(d.sources):
        if s.type == "files" and not corpus.source_files(s.path):
            raise ConfigError(
                f"data.sources[{i}].path: glob {s.path!r} (source {s.name!r}) matches no files; "
                "check the path or quote the glob."
            )
    for pattern in d.decontaminate:
        if not corpus.source_files(pattern):
            raise ConfigError(f"data.decontaminate: glob {pattern!r} matches no files; check the path.")


def prepare_corpus(d: DataConfig, run: RunDir) -> dict:
    """Curate (Beam pipeline) into data/clean: per-source JSONL splits, ledger and report."""
    out_dir = RunDir(run).clean
    report_path = RunDir(run).curation_report
    if report_path.exists():
        log(f"[prepare] reusing cleaned corpus in {out_dir}")
        return json.loads(report_path.read_text())
    check_sources(d)
    tmp_dir = out_dir.with_name("clean.partial")
    if tmp_dir.exists():
        tmp_dir.rmtree()
    start = time.perf_counter()
    log(f"[prepare] curating {len(d.sources)} sources (Apache Beam, {d.curate_workers} worker(s))")
    curate.run(d, tmp_dir, d.curate_workers)
    report = curation_report.build(clean.ledger_files(tmp_dir), d.source_names)
    curation_report.write(report, tmp_dir)
    for s in d.sources:
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


def prepare_tokenizer(t: TokenizerConfig, d: DataConfig, model_vocab_size: int, run: RunDir) -> epath.Path:
    path = RunDir(run).tokenizer
    if path.exists():
        log(f"[tokenizer] reusing {path} (fingerprint {tok.fingerprint(path)})")
        return path
    start = time.perf_counter()
    if t.model_file:
        path = tok.install_tokenizer(t.model_file, RunDir(run).tokenizer_dir)
    else:
        files = [f for name in d.source_names for f in clean.split_files(RunDir(run).clean, name, "train")]
        log(f"[tokenizer] training {t.model_type} vocab={t.vocab_size} on <= {t.sample_bytes / 1e6:.1f} MB")
        path = tok.train_tokenizer(
            files,
            path.parent,
            vocab_size=t.vocab_size,
            model_type=t.model_type,
            byte_fallback=t.byte_fallback,
            sample_bytes=t.sample_bytes,
            special_tokens=t.special_tokens,
        )
    tokenizer = tok.load(path)
    if tokenizer.vocab_size > model_vocab_size:
        raise ConfigError(
            f"tokenizer: {path} has {tokenizer.vocab_size} tokens but model.vocab_size={model_vocab_size}; "
            f"set model.vocab_size={tokenizer.vocab_size}."
        )
    log(f"[tokenizer] {path} in {time.perf_counter() - start:.1f}s (fingerprint {tok.fingerprint(path)}, "
        f"BOS {tokenizer.bos_id}, EOS {tokenizer.eos_id})")
    return path


def prepare_shards(d: DataConfig, run: RunDir) -> dict:
    run = RunDir(run)
    if run.token_counts.exists():
        log(f"[tokenize] reusing token shards in {run.tfds}")
        return json.loads(run.token_counts.read_text())
    start = time.perf_counter()
    log("[tokenize] encoding the cleaned corpus into ArrayRecord shards (TFDS builder)")
    counts = shards.build_shards(run, d.source_names)
    total = sum(c["tokens"] for c in counts.values())
    nbytes = sum(c["bytes"] for c in counts.values())
    log(f"[tokenize] {total:,} tokens from {nbytes / 1e6:.1f} MB in {time.perf_counter() - start:.1f}s")
    for name, c in counts.items():
        log(f"[tokenize]   {name:32s} {c['docs']:6d} docs {c['tokens']:10,d} tokens")
    return counts
