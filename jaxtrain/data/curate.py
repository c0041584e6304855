"""The curation pipeline on Apache Beam: read, judge, deduplicate globally, cap, split, write.

The same pipeline runs on the DirectRunner here (in-process, or several worker
processes with `data.curate_workers`) and on Dataflow, Flink or Spark through
`data.beam_options` (e.g. `--runner=DataflowRunner --project=P --region=R
--temp_location=gs://B/tmp`). Dedup is global, not per shard: exact duplicates
meet in a GroupByKey on the text hash, near duplicates in a GroupByKey on each
MinHash LSH band key. Within a group the smallest document key (source order,
then id) is the representative, so the same input always keeps the same
documents whatever the runner or worker count.
Every input unit (document, line, row, file, directory, damage) leaves one
ledger line (kept / removed:rule / duplicate:representative /
unreadable:reason / skipped:reason / capped); the report is built from the
ledger. The readers also count, from the raw input, how many ledger lines
each unit requires (`read_counts.json`), so a document lost anywhere between
reading and the ledger is caught (`jaxtrain.data.prepare` compares them).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from etils import epath

from jaxtrain.data import clean, corpus, files, filters, quality, web
from jaxtrain.data.curation_report import REMOVED_SAMPLES, SAMPLES_PER_RULE
from jaxtrain.data.config import DataConfig
from jaxtrain.data.minhash import MinHasher, band_keys
from jaxtrain.errors import ConfigError
from jaxtrain.utils import log

RECORD_FIELDS = ("url", "domain", "record_id", "date", "language", "quality_score")  # provenance and scores: into the cleaned JSONL
READ = "read"  # the tagged output of _Read: (source, ledger lines its units require)
SAMPLE_CHARS = 2000  # the start of each sampled document


def _read_tfds(index_range: tuple[int, int], spec: dict) -> files.Reader:
    return (yield from corpus.tfds_source(spec["name"], spec["dataset"], spec["split"], spec["data_dir"],
                                          spec["text_field"], *index_range))


class _Read(beam.DoFn):
    """One unit (file, embedded piece, TFDS range) -> its documents, and on the READ output
    (source, ledger lines the unit requires), counted by the reader from the raw input."""

    def __init__(self, source: str, reader: Callable[..., files.Reader], *args):
        self.source, self.reader, self.args = source, reader, args

    def process(self, unit) -> Iterator:
        n = yield from self.reader(unit, *self.args)
        yield beam.pvalue.TaggedOutput(READ, (self.source, n))


def _judge(doc: files.Document, rules: clean.SourceRules) -> Iterator[dict]:
    """The document's ledger entry (one per document; the ledger check counts on it); a removed one carries
    the start of its text for the removed-document samples (never into the ledger)."""
    entry = clean.judge(doc, rules)
    if entry["bucket"] == "removed" and doc.text:
        entry["excerpt"] = doc.text[:SAMPLE_CHARS]
    yield entry


def _sample_record(e: dict) -> tuple[tuple[str, str], dict]:
    """(source, rule) -> the sampled document: a hash of its key orders the sample (the same on every runner)."""
    rank = hashlib.sha1(e["key"].encode()).hexdigest()[:12]
    text = e.get("excerpt") or e.get("text", "")[:SAMPLE_CHARS]
    return (e["source"], e["reason"]), {"source": e["source"], "rule": e["reason"], "id": e["id"], "rank": rank,
                                        **{k: e[k] for k in ("url", "blocked_by") if k in e}, "text": text}


def _write_samples(groups: list[tuple[tuple[str, str], list[dict]]], out_dir: str) -> None:
    records = sorted((r for _, rs in groups for r in rs), key=lambda r: (r["source"], r["rule"], r["rank"]))
    (epath.Path(out_dir) / REMOVED_SAMPLES).write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "rank"}, ensure_ascii=False) + "\n" for r in records))


def _write_read_counts(counts: list[tuple[str, int]], out_dir: str) -> None:
    (epath.Path(out_dir) / clean.READ_COUNTS).write_text(json.dumps(dict(sorted(counts)), indent=1))


def _resolve_exact(item: tuple[str, Iterable[dict]]) -> Iterator[dict]:
    _, group = item
    group = sorted(group, key=lambda e: e["key"])
    yield group[0]
    for e in group[1:]:
        yield {**e, "bucket": "duplicate", "reason": f"exact:{group[0]['key']}"}


class _Sign(beam.DoFn):
    """MinHash signatures in batches (numpy work is shared across a batch) -> (band key, doc key)."""

    def __init__(self, ngram: int, bands: int, rows: int):
        self.ngram, self.bands, self.rows = ngram, bands, rows

    def setup(self):
        self.hasher = MinHasher(num_perm=self.bands * self.rows, ngram=self.ngram)

    def process(self, batch: list[dict]) -> Iterator[tuple[bytes, str]]:
        sigs = self.hasher.signatures([e["text"] for e in batch])
        for e, sig in zip(batch, sigs):
            for key in band_keys(sig, self.bands, self.rows):
                yield key, e["key"]


def _bucket_edges(item: tuple[bytes, Iterable[str]]) -> Iterator[tuple[str, str]]:
    _, docs = item
    docs = sorted(set(docs))
    for d in docs[1:]:
        yield d, docs[0]


def _second_hop(item: tuple[str, dict]) -> Iterator[tuple[str, str]]:
    """Docs pointing at `rep` point at rep's own representative when it has one (chains of two)."""
    rep, groups = item
    target = min([rep, *groups["its_rep"]])
    for doc in groups["pointing"]:
        yield doc, target


def _mark_near(item: tuple[str, dict]) -> Iterator[dict]:
    _, groups = item
    reps = list(groups["rep"])
    for e in groups["doc"]:
        yield {**e, "bucket": "duplicate", "reason": f"near:{min(reps)}"} if reps else e


def shard_of(key: str, num_shards: int) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % num_shards


def _cap(e: dict, caps: dict, totals: dict) -> dict:
    """max_bytes without a global sort: keep a document when a hash of its text falls under
    max_bytes / (the source's kept bytes). Deterministic, and it scales with the workers."""
    cap = caps.get(e["source"], 0)
    keep = min(1.0, cap / max(totals.get(e["source"], 1), 1)) if cap else 1.0
    if int(e["digest"][8:16], 16) / 2**32 < keep:  # bits independent of the split's
        return e
    return {**e, "bucket": "capped", "reason": f"max_bytes={cap}"}


def _split_hash(e: dict) -> int:
    return int(e["digest"][:8], 16)


class _WriteShard(beam.DoFn):
    """One shard of one source's documents: split (hash-based; the source's lowest hash is always
    held out, so no split is ever empty) and write JSONL in hash order."""

    def __init__(self, out_dir: str, eval_fraction: float, num_shards: int):
        self.out_dir, self.eval_fraction, self.num_shards = out_dir, eval_fraction, num_shards

    def process(self, item: tuple[tuple[str, int], Iterable[dict]], lowest: dict) -> Iterator[dict]:
        (source, shard), entries = item
        out = epath.Path(self.out_dir)
        names = {split: out / clean.split_file(source, split, shard, self.num_shards) for split in ("train", "validation")}
        with names["train"].open("w") as train_f, names["validation"].open("w") as eval_f:
            for e in sorted(entries, key=lambda e: e["digest"]):
                held_out = clean.is_eval(e["digest"], self.eval_fraction) or _split_hash(e) == lowest[source]
                record = {"source": source, "id": e["id"], **{k: e[k] for k in RECORD_FIELDS if k in e}, "text": e["text"]}
                (eval_f if held_out else train_f).write(json.dumps(record, ensure_ascii=False) + "\n")
                yield {**e, "split": "validation" if held_out else "train"}


def _ledger_line(e: dict) -> str:
    return json.dumps({k: v for k, v in e.items() if k not in ("text", "digest", "excerpt")}, ensure_ascii=False)


def _write_ledger(item: tuple[tuple[str, int], Iterable[dict]], out_dir: str) -> None:
    """One ledger file per source and shard, through epath (local or gs://, without Beam's GCS extra)."""
    (source, shard), entries = item
    lines = sorted(_ledger_line(e) for e in entries)
    (epath.Path(out_dir) / clean.ledger_file(source, shard)).write_text("\n".join(lines) + "\n")


def decontamination_ngrams(patterns: tuple[str, ...], n: int, *, strict: bool = True) -> frozenset:
    """The n-grams of the evaluation sets: text files whole, and a JSONL record by its string values (a
    benchmark's prompt, choices and answer, whatever its fields are called). strict: a file without text is
    refused (the user named it); otherwise it adds nothing (a built-in task that got no examples)."""
    grams: set[str] = set()
    for pattern in patterns:
        for path in files.readable_matches(pattern):
            found: set[str] = set()
            for text in benchmark_texts(path, strict=strict):
                found |= filters.ngrams(text, n)
            if strict and not found:
                log(f"[prepare] WARNING: data.decontaminate: {path} has no span of {n} words, so no document can "
                    f"match it; lower data.decontaminate_ngram (benchmarks of short items use 8)")
            grams |= found
    return frozenset(grams)


def benchmark_texts(path: str, *, strict: bool = True) -> Iterator[str]:
    """The texts of one evaluation-set file: a JSONL file's records (record_texts), any other file as the
    readers see it."""
    if path.endswith((".jsonl", ".jsonl.gz")):
        texts = [t for record in _jsonl_records(path) for t in record_texts(record)]
    else:
        texts = [doc.text for doc in files.read_path(path, "eval") if doc.text]
    texts = [t for t in texts if t.strip()]
    if strict and not texts:
        raise ConfigError(f"data.decontaminate: {path} holds no text to decontaminate against; give text files or "
                          "JSONL records with string fields (prompt, answer, ...).")
    yield from texts


def _jsonl_records(path: str) -> Iterator[Any]:
    with epath.Path(path).open("rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as e:
                raise ConfigError(f"data.decontaminate: {path}:{lineno} is not JSON ({e}); fix the line or give "
                                  "the file as text.") from e


def record_texts(record: Any) -> list[str]:
    """What a benchmark record can leak as: all its strings in field order, and for a multiple-choice record
    (a list of strings beside the prompt's fields) the prompt followed by each choice, as a document that
    quotes the question and its answer would read."""
    whole = _strings(record)
    if not isinstance(record, dict):
        return [whole]
    prompt = "\n".join(v for v in record.values() if isinstance(v, str))
    choices = [c for v in record.values() if isinstance(v, list) for c in v if isinstance(c, str)]
    return [whole, *(f"{prompt} {c}" for c in choices)] if prompt and choices else [whole]


def _strings(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(_strings(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(_strings(v) for v in value)
    return ""


def source_rules(d: DataConfig) -> dict[str, clean.SourceRules]:
    decon = decontamination_ngrams(d.decontaminate, d.decontaminate_ngram) if d.decontaminate else frozenset()
    return {
        s.name: clean.SourceRules(
            source=s.name, order=i,
            rules=tuple(s.filters) if s.filters is not None else filters.DEFAULT_RULES[s.content],
            min_chars=d.min_chars, max_chars=d.max_chars, min_alpha_fraction=d.min_alpha_fraction,
            pii=s.pii, decontaminate=decon, decontaminate_n=d.decontaminate_ngram,
            identify_language=s.type == "warc" or bool(s.languages), languages=tuple(s.languages),
            min_language_score=s.min_language_score,
            url_blocklist=web.read_blocklist(s.url_blocklist) if s.url_blocklist else (),
            thresholds=d.thresholds,
        )
        for i, s in enumerate(d.sources)
    }


def pipeline_options(workers: int, extra: tuple[str, ...] = ()) -> PipelineOptions:
    if any(o.startswith("--runner") for o in extra):
        return PipelineOptions(list(extra))
    mode = "multi_processing" if workers > 1 else "in_memory"
    return PipelineOptions(list(extra), direct_num_workers=workers, direct_running_mode=mode)


def run(d: DataConfig, out_dir: epath.Path, workers: int = 1) -> None:
    """Curate every source of the data section into `out_dir`: {source}.{train,validation}.jsonl + ledger."""
    rules = source_rules(d)
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with beam.Pipeline(options=pipeline_options(workers, d.beam_options)) as p:
        judged, read_counts = [], []
        for s in d.sources:
            if s.type == "files":
                units, reader = files.matches(s.path), _Read(s.name, files.read_path, s.name, s.text_field)
            elif s.type == "warc":
                units, reader = files.matches(s.path), _Read(s.name, web.read_warc, s.name)  # a directory: one entry
            elif s.type == "embedded":
                units, reader = corpus.embedded_units(s.name), _Read(s.name, corpus.read_embedded_unit, s.name)
            else:
                spec = {"name": s.name, "dataset": s.dataset, "split": s.split, "data_dir": s.data_dir,
                        "text_field": s.text_field}
                units, reader = corpus.tfds_ranges(s.dataset, s.split, s.data_dir), _Read(s.name, _read_tfds, spec)
            # Reshuffles spread the units, then the documents, over the workers (a Create is one bundle).
            read = (p | f"List {s.name}" >> beam.Create(units) | f"Spread {s.name}" >> beam.Reshuffle()
                    | f"Read {s.name}" >> beam.ParDo(reader).with_outputs(READ, main="docs"))
            read_counts.append(read[READ])
            docs = read.docs | f"Spread docs {s.name}" >> beam.Reshuffle()
            judged.append(docs | f"Judge {s.name}" >> beam.FlatMap(_judge, rules[s.name]))
        _ = (read_counts | "All counts" >> beam.Flatten() | "Count per source" >> beam.CombinePerKey(sum)
             | "Counts" >> beam.combiners.ToList() | "Write counts" >> beam.Map(_write_read_counts, str(out_dir)))
        entries = judged | "All sources" >> beam.Flatten()
        kept = entries | "Kept" >> beam.Filter(lambda e: e["bucket"] == "kept")
        done = [entries | "Not kept" >> beam.Filter(lambda e: e["bucket"] != "kept")]
        if d.exact_dedup:
            resolved = (kept | "By hash" >> beam.Map(lambda e: (e["digest"], e)) | "Group hash" >> beam.GroupByKey()
                        | "Resolve exact" >> beam.FlatMap(_resolve_exact))
            kept = resolved | "Unique" >> beam.Filter(lambda e: e["bucket"] == "kept")
            done.append(resolved | "Exact dups" >> beam.Filter(lambda e: e["bucket"] != "kept"))
        if d.near_dedup:
            rep1 = (kept | "Batch" >> beam.BatchElements(min_batch_size=16, max_batch_size=256)
                    | "MinHash" >> beam.ParDo(_Sign(d.minhash_ngram, d.minhash_bands, d.minhash_rows))
                    | "Group band" >> beam.GroupByKey() | "Edges" >> beam.FlatMap(_bucket_edges)
                    | "Smallest neighbour" >> beam.CombinePerKey(min))
            rep = ({"pointing": rep1 | "Invert" >> beam.Map(lambda dr: (dr[1], dr[0])), "its_rep": rep1}
                   | "Join hop" >> beam.CoGroupByKey() | "Second hop" >> beam.FlatMap(_second_hop))
            marked = ({"doc": kept | "By key" >> beam.Map(lambda e: (e["key"], e)), "rep": rep}
                      | "Join rep" >> beam.CoGroupByKey() | "Mark near" >> beam.FlatMap(_mark_near))
            kept = marked | "Distinct" >> beam.Filter(lambda e: e["bucket"] == "kept")
            done.append(marked | "Near dups" >> beam.Filter(lambda e: e["bucket"] != "kept"))
        qc = d.quality_classifier
        if qc.reference:  # after the heuristics and the dedup, as DCLM ran its classifier
            judged_by_qc = quality.apply(kept, qc, qc.targets(d.source_names, {s.name: s.type for s in d.sources}),
                                         str(out_dir))
            kept = judged_by_qc | "QC kept" >> beam.Filter(lambda e: e["bucket"] == "kept")
            done.append(judged_by_qc | "QC removed" >> beam.Filter(lambda e: e["bucket"] != "kept"))
        caps = {s.name: s.max_bytes for s in d.sources}
        n = d.clean_shards
        totals = kept | "Bytes" >> beam.Map(lambda e: (e["source"], e["kept_bytes"])) | "Per source" >> beam.CombinePerKey(sum)
        capped = kept | "Cap" >> beam.Map(_cap, caps, beam.pvalue.AsDict(totals))
        kept = capped | "Within cap" >> beam.Filter(lambda e: e["bucket"] == "kept")
        done.append(capped | "Over cap" >> beam.Filter(lambda e: e["bucket"] != "kept"))
        lowest = kept | "Split hash" >> beam.Map(lambda e: (e["source"], _split_hash(e))) | "Lowest" >> beam.CombinePerKey(min)
        written = (kept | "By shard" >> beam.Map(lambda e: ((e["source"], shard_of(e["digest"], n)), e))
                   | "Group shard" >> beam.GroupByKey()
                   | "Write" >> beam.ParDo(_WriteShard(str(out_dir), d.eval_fraction, n), beam.pvalue.AsDict(lowest)))
        _ = (done | "Not kept, all" >> beam.Flatten() | "Removed" >> beam.Filter(lambda e: e["bucket"] == "removed")
             | "By rule" >> beam.Map(_sample_record)
             | "Sample per rule" >> beam.combiners.Top.SmallestPerKey(SAMPLES_PER_RULE, key=lambda r: r["rank"])
             | "Samples" >> beam.combiners.ToList() | "Write samples" >> beam.Map(_write_samples, str(out_dir)))
        _ = ([*done, written] | "Ledger" >> beam.Flatten()
             | "Ledger by shard" >> beam.Map(lambda e: ((e["source"], shard_of(e["key"], n)), e))
             | "Group ledger" >> beam.GroupByKey() | "Write ledger" >> beam.Map(_write_ledger, str(out_dir)))
