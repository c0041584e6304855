"""Data stages as library calls: corpus -> clean -> tokenizer -> token shards.

Each stage takes its own config sections and the run directory and is atomic
(`jaxtrain.data.stages`): built aside, published with one rename, and marked
done last with the inputs it was built from. A stage whose marker is there
with the same inputs is skipped, so re-running resumes instead of redoing
work; one whose marker is missing (killed at any point) or records other
inputs (a new or changed source, other tokenizer settings) is built again,
and so is every stage that read it.
"""

from __future__ import annotations

import json
import time

from etils import epath

from jaxtrain.data import clean, curate, curation_report, files, provenance, quality, shards, stages
from jaxtrain.data import tokenizer as tok
from jaxtrain.data.config import DataConfig, TokenizerConfig
from jaxtrain.errors import ConfigError, JaxtrainError
from jaxtrain.rundir import RunDir
from jaxtrain.utils import log


def missing_stages(run: RunDir) -> list[str]:
    """The commands of the data stages the run directory has not finished (no marker), or whose files changed
    since they were built (with the file named)."""
    missing = []
    for stage in ("curation", "tokenizer", "shards"):
        record = stages.marker(run, stage)
        reason = "" if record is None else stages.damage(run, stage, record)
        if reason is not None:
            missing.append(stages.COMMANDS[stage] + (f" ({reason})" if reason else ""))
    return missing


class AccountingError(JaxtrainError):
    """Curation's ledger does not account for every input unit the readers counted."""


def check_inputs(d: DataConfig, t: TokenizerConfig | None = None, run: RunDir | None = None) -> None:
    """Refuse sources and files that cannot produce anything, before any work starts (the source
    globs only while curation still has to run: a finished corpus does not need them). Run once,
    when a command's config is resolved (`jaxtrain.runconfig`)."""
    if t is not None:
        check_tokenizer_file(t)
    if run is not None and stages.done(run, "curation", d.curation_inputs(), quiet=True):
        return
    check_sources(d)


def check_sources(d: DataConfig) -> None:
    for i, s in enumerate(d.sources):
        if s.type in ("files", "warc") and not files.readable_matches(s.path):
            raise ConfigError(
                f"data.sources[{i}].path: glob {s.path!r} (source {s.name!r}) matches no files; "
                "check the path or quote the glob."
            )
    for pattern in d.decontaminate:
        if not files.readable_matches(pattern):
            raise ConfigError(f"data.decontaminate: glob {pattern!r} matches no files; check the path.")


def check_tokenizer_file(t: TokenizerConfig) -> None:
    if t.model_file and not epath.Path(t.model_file).exists():
        raise ConfigError(f"tokenizer.model_file: {t.model_file} does not exist; give the path of a sentencepiece "
                          ".model file, or leave it empty to train one.")


def check_accounting(report: dict, where: epath.Path) -> None:
    """Every source's ledger lines equal the count its readers took from the raw input."""
    for name, r in report.items():
        if not r["read"] == r["input_docs"] == r["accounted"]:
            raise AccountingError(
                f"curation lost input of source {name!r}: reading counted {r['read']} lines, rows and files, "
                f"the ledger has {r['input_docs']} entries ({r['accounted']} in known buckets); nothing was "
                f"published (see {where / 'report.md'}). This is a bug: please report it."
            )


def prepare_corpus(d: DataConfig, run: RunDir, *, inputs_checked: bool = False) -> dict:
    """Curate (Beam pipeline) into data/clean: per-source JSONL splits, ledger and report. The sources
    are checked first unless the caller's resolution did (`inputs_checked`)."""
    run = RunDir(run)
    inputs = d.curation_inputs()
    if stages.done(run, "curation", inputs):
        log(f"[prepare] reusing cleaned corpus in {run.clean}")
        return json.loads(run.curation_report.read_text())
    if not inputs_checked:
        check_sources(d)
    start = time.perf_counter()
    log(f"[prepare] curating {len(d.sources)} source{'s' if len(d.sources) != 1 else ''} (Apache Beam, "
        f"{d.curate_workers} worker{'s' if d.curate_workers != 1 else ''})")
    report: dict = {}

    def write(tmp_dir: epath.Path) -> str:
        curate.run(d, tmp_dir, d.curate_workers)
        stages.fault_point("curation", "pipeline_done")
        counts = json.loads((tmp_dir / clean.READ_COUNTS).read_text())
        meta_file = tmp_dir / quality.META_FILE
        classifier = json.loads(meta_file.read_text()) if meta_file.exists() else None
        if classifier and "error" in classifier:
            raise ConfigError(classifier["error"])
        provenance.write(d, tmp_dir, run.curation_inputs.name)
        report.update(curation_report.build(clean.ledger_files(tmp_dir), d.source_names, counts, classifier))
        curation_report.write(report, tmp_dir)
        check_accounting(report, tmp_dir)
        if classifier:
            log(f"[prepare] quality classifier: trained on {classifier['train_docs']} documents "
                f"({classifier['train_positive']} reference, {classifier['train_negative']} filtered), held-out "
                f"balanced accuracy {classifier['balanced_accuracy']} (accuracy {classifier['accuracy']}; always "
                f"answering the bigger class: {classifier['majority_rate']})")
            if min(classifier["train_positive"], classifier["train_negative"]) < 100:
                log("[prepare] quality classifier: fewer than 100 documents in a class; its scores rest on little "
                    "evidence (DCLM trained on 400,000)")
        for s in d.sources:
            _log_source(s.name, report[s.name])
            if warning := curation_report.lost_warning(s.name, report[s.name], d.warn_lost_fraction):
                log(f"[prepare] WARNING: {warning}")
            r = report[s.name]
            if r["kept_docs"] - r["eval_docs"] <= 0 or r["eval_docs"] <= 0:
                raise ConfigError(
                    f"data.sources: source {s.name!r} kept {r['kept_docs']} documents ({r['eval_docs']} held out); "
                    f"both the train and validation splits need at least one (see {tmp_dir / 'report.md'}). "
                    "Raise max_bytes, loosen data.min_chars or the source's filters."
                )
        return stages.file_digest(tmp_dir / "report.json", tmp_dir / clean.READ_COUNTS,
                                  tmp_dir / run.curation_inputs.name)

    stages.build(run, "curation", inputs, write)
    log(f"[prepare] done in {time.perf_counter() - start:.1f}s -> {run.clean} (report.md, report.png)")
    return report


def _log_source(name: str, r: dict) -> None:
    log(f"[prepare] {name}: {r['input_docs']} in, {r['kept_docs']} kept ({r['kept_bytes'] / 1e6:.1f} MB, "
        f"{r['eval_docs']} held out), duplicates {r['duplicates']}, removed {sum(r['removed'].values())} "
        f"{_top(r['removed'])}, unreadable {sum(r['unreadable'].values())}, skipped {sum(r['skipped'].values())}, "
        f"{r['capped_docs']} over max_bytes, {r['pii_replaced']} PII replaced")


def _top(counter: dict, n: int = 4) -> dict:
    return dict(sorted(counter.items(), key=lambda kv: -kv[1])[:n])


def tokenizer_inputs(t: TokenizerConfig, run: RunDir) -> dict:
    """What the tokenizer depends on: its settings, and the cleaned corpus or the supplied file."""
    if t.model_file:
        return {"tokenizer": t.inputs(), "model_file": tok.fingerprint(t.model_file)}
    return {"tokenizer": t.inputs(), "corpus": stages.upstream_digest(run, "curation")}


def prepare_tokenizer(t: TokenizerConfig, d: DataConfig, model_vocab_size: int, run: RunDir) -> epath.Path:
    """Train (or install tokenizer.model_file) into tokenizer/; tokenizer.model_file was checked when the
    config was resolved (`check_inputs`)."""
    run = RunDir(run)
    inputs = tokenizer_inputs(t, run)
    if stages.done(run, "tokenizer", inputs):
        log(f"[tokenizer] reusing {run.tokenizer} (fingerprint {tok.fingerprint(run.tokenizer)})")
    else:
        start = time.perf_counter()

        def write(tmp_dir: epath.Path) -> str:
            if t.model_file:
                path = tok.install_tokenizer(t.model_file, tmp_dir)
            else:
                train = [f for name in d.source_names for f in clean.split_files(run.clean, name, "train")]
                log(f"[tokenizer] training {t.model_type} vocab={t.vocab_size} on <= {t.sample_bytes / 1e6:.1f} MB")
                path = tok.train_tokenizer(train, tmp_dir, vocab_size=t.vocab_size, model_type=t.model_type,
                                           byte_fallback=t.byte_fallback, sample_bytes=t.sample_bytes,
                                           special_tokens=t.special_tokens)
            if not t.model_file and tok.keep_existing_if_same(run.tokenizer, path):
                log(f"[tokenizer] the rebuilt model equals {run.tokenizer} (pieces and settings): kept that file")
            return tok.fingerprint(path)

        stages.build(run, "tokenizer", inputs, write)
        tokenizer = tok.load(run.tokenizer)
        log(f"[tokenizer] {run.tokenizer} in {time.perf_counter() - start:.1f}s "
            f"(fingerprint {tok.fingerprint(run.tokenizer)}, BOS {tokenizer.bos_id}, EOS {tokenizer.eos_id})")
    pieces = tok.load(run.tokenizer).vocab_size
    if pieces > model_vocab_size:
        raise ConfigError(f"tokenizer: {run.tokenizer} has {pieces} tokens but model.vocab_size={model_vocab_size}; "
                          f"set model.vocab_size={pieces}.")
    return run.tokenizer


def prepare_shards(d: DataConfig, run: RunDir) -> dict:
    run = RunDir(run)
    inputs = {"corpus": stages.upstream_digest(run, "curation"), "tokenizer": stages.upstream_digest(run, "tokenizer"),
              "sources": d.source_names}
    if stages.done(run, "shards", inputs):
        log(f"[tokenize] reusing token shards in {run.tfds}")
        return shards.token_counts(run)
    start = time.perf_counter()
    log("[tokenize] encoding the cleaned corpus into ArrayRecord shards (TFDS builder)")

    def write(tmp_dir: epath.Path) -> str:
        shards.build_shards(run, d.source_names, tmp_dir)
        return stages.file_digest(tmp_dir / run.token_counts.name)

    stages.build(run, "shards", inputs, write)
    counts = shards.token_counts(run)
    total = sum(c["tokens"] for c in counts.values())
    nbytes = sum(c["bytes"] for c in counts.values())
    log(f"[tokenize] {total:,} tokens from {nbytes / 1e6:.1f} MB in {time.perf_counter() - start:.1f}s")
    for name, c in counts.items():
        log(f"[tokenize]   {name:32s} {c['docs']:6d} docs {c['tokens']:10,d} tokens")
    return counts
