"""Per-document cleaning (normalize, judge by the source's rules, scrub PII, decontaminate),
and the names of the files curation writes.

Pure functions of one document, so the curation pipeline (jaxtrain.data.curate)
can run them on any number of Beam workers. The global steps (exact and
near-duplicate removal, caps, the held-out split) live in the pipeline.
The held-out split is chosen by a hash of the document text, so it is stable
across runs and never depends on order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import unicodedata

from etils import epath

from jaxtrain.data import filters, web
from jaxtrain.data.files import Document
from jaxtrain.data.thresholds import DEFAULT as DEFAULT_THRESHOLDS
from jaxtrain.data.thresholds import Thresholds


@dataclasses.dataclass(frozen=True)
class SourceRules:
    """What one source's documents must pass; built from the config before the pipeline starts."""

    source: str
    order: int  # position in the config: earlier sources win ties for representatives
    rules: tuple[str, ...] = ()
    min_chars: int = 200
    max_chars: int = 200_000
    min_alpha_fraction: float = 0.5
    pii: bool = True
    decontaminate: frozenset = frozenset()  # n-grams of the evaluation sets
    decontaminate_n: int = 13
    identify_language: bool = False  # record each document's language (web sources, or when languages is set)
    languages: tuple[str, ...] = ()  # keep only these (empty: all)
    min_language_score: float = 0.0
    url_blocklist: tuple[str, ...] = ()  # domains / URL substrings (documents with a url only)
    thresholds: Thresholds = DEFAULT_THRESHOLDS  # the rules' thresholds (data.thresholds)


def normalize(text: str) -> str:
    """NFC, Unix newlines, no trailing spaces, no runs of blank lines at the ends."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\ufffd", "")  # drop replacement chars left by invalid UTF-8
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def is_eval(digest: str, eval_fraction: float) -> bool:
    return int(digest[:8], 16) % 10_000 < eval_fraction * 10_000


def doc_key(order: int, doc_id: str) -> str:
    """Total order over documents: the smallest key of a duplicate group is kept."""
    return f"{order:04d}|{doc_id}"


def judge(doc: Document, r: SourceRules) -> dict:
    """One ledger entry: bucket kept / removed (rule) / unreadable (reason) / skipped (not a
    document: blank line, empty file, directory), with the record if kept."""
    entry = {"source": r.source, "id": doc.doc_id, "key": doc_key(r.order, doc.doc_id), **(doc.meta or {})}
    if doc.skipped:
        return {**entry, "bucket": "skipped", "reason": doc.skipped, "bytes": 0}
    if doc.text is None:
        return {**entry, "bucket": "unreadable", "reason": doc.error or "unknown", "bytes": 0}
    raw_bytes = len(doc.text.encode("utf-8", errors="replace"))
    entry.update(bytes=raw_bytes, repaired_utf8="\ufffd" in doc.text)
    text = normalize(doc.text)
    if not text.strip():
        return {**entry, "bucket": "removed", "reason": "empty"}
    if len(text) < r.min_chars:
        return {**entry, "bucket": "removed", "reason": "too_short"}
    if len(text) > r.max_chars:
        return {**entry, "bucket": "removed", "reason": "too_long"}
    if r.url_blocklist and (hit := web.blocked(entry.get("url", ""), entry.get("domain", ""), r.url_blocklist)):
        return {**entry, "bucket": "removed", "reason": "url_blocklist", "blocked_by": hit}
    if r.identify_language:
        entry["language"], entry["language_score"] = web.identify(text)
        if r.languages and (entry["language"] not in r.languages or entry["language_score"] < r.min_language_score):
            return {**entry, "bucket": "removed", "reason": "language"}
    failed, text = filters.apply_rules(text, r.rules, r.min_alpha_fraction, r.thresholds)
    if failed:
        return {**entry, "bucket": "removed", "reason": failed}
    if r.decontaminate and not r.decontaminate.isdisjoint(filters.ngrams(text, r.decontaminate_n)):
        return {**entry, "bucket": "removed", "reason": "decontaminated"}
    pii = 0
    if r.pii:
        text, pii = filters.scrub_pii(text)
    return {**entry, "bucket": "kept", "pii": pii, "text": text, "digest": text_hash(text),
            "kept_bytes": len(text.encode("utf-8"))}


def split_file(source: str, split: str, shard: int = 0, num_shards: int = 1) -> str:
    """`{source}.{split}.jsonl`, or one of num_shards `{source}.{split}-SSSSS-of-NNNNN.jsonl`."""
    return f"{source}.{split}.jsonl" if num_shards == 1 else f"{source}.{split}-{shard:05d}-of-{num_shards:05d}.jsonl"


def split_files(clean_dir: epath.Path, source: str, split: str) -> list[epath.Path]:
    one = epath.Path(clean_dir) / split_file(source, split)
    return [one] if one.exists() else sorted(epath.Path(clean_dir).glob(f"{source}.{split}-*-of-*.jsonl"))


def all_split_files(clean_dir: epath.Path, split: str) -> list[epath.Path]:
    """Every source's files of one split."""
    return sorted(epath.Path(clean_dir).glob(f"*.{split}*.jsonl"))


READ_COUNTS = "read_counts.json"  # per source: the ledger lines its input requires, counted when read


def ledger_file(source: str, shard: int) -> str:
    """One ledger file per source and output shard: a line for every input document."""
    return f"ledger-{source}-{shard:05d}.jsonl"


def ledger_files(clean_dir: epath.Path) -> list[epath.Path]:
    return sorted(epath.Path(clean_dir).glob("ledger-*.jsonl"))
