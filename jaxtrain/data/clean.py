"""Cleaning: normalize, filter by length and quality, exact-dedup, split train/eval.

Every input document ends in exactly one bucket (kept, removed by a named rule,
duplicate, or unreadable) and the report's counts add up to the input.
The held-out split is chosen by a hash of the document text, so it is stable
across runs and never depends on order.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import pathlib
import unicodedata
from typing import Iterable, Iterator

from jaxtrain.data.corpus import Document


@dataclasses.dataclass(frozen=True)
class CleanRules:
    min_chars: int = 200
    max_chars: int = 200_000
    min_alpha_fraction: float = 0.5
    min_alnum_fraction_code: float = 0.4


def normalize(text: str) -> str:
    """NFC, Unix newlines, no trailing spaces, no runs of blank lines at the ends."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\ufffd", "")  # drop replacement chars left by invalid UTF-8
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def quality_rule(text: str, content: str, rules: CleanRules) -> str | None:
    """Name of the first rule the document fails, or None if it passes."""
    if len(text) < rules.min_chars:
        return "too_short"
    if len(text) > rules.max_chars:
        return "too_long"
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return "empty"
    if content == "code":
        if sum(c.isalnum() for c in visible) / len(visible) < rules.min_alnum_fraction_code:
            return "low_alnum_fraction"
    elif sum(c.isalpha() for c in visible) / len(visible) < rules.min_alpha_fraction:
        return "low_alpha_fraction"
    return None


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def is_eval(digest: str, eval_fraction: float) -> bool:
    return int(digest[:8], 16) % 10_000 < eval_fraction * 10_000


@dataclasses.dataclass
class SourceReport:
    input_docs: int = 0
    input_bytes: int = 0
    kept_docs: int = 0
    kept_bytes: int = 0
    eval_docs: int = 0
    duplicate_docs: int = 0
    unreadable_docs: int = 0
    capped_docs: int = 0
    removed: dict = dataclasses.field(default_factory=lambda: collections.Counter())
    unreadable_reasons: dict = dataclasses.field(default_factory=lambda: collections.Counter())

    def accounted(self) -> int:
        return self.kept_docs + self.duplicate_docs + self.unreadable_docs + self.capped_docs + sum(self.removed.values())


def clean_source(
    docs: Iterable[Document],
    content: str,
    rules: CleanRules,
    seen: dict[str, str],
    report: SourceReport,
    eval_fraction: float,
    max_bytes: int = 0,
) -> Iterator[tuple[str, dict]]:
    """Yields (split, record) for kept documents; `seen` is shared across sources for global dedup."""
    for doc in docs:
        report.input_docs += 1
        if doc.text is None:
            report.unreadable_docs += 1
            report.unreadable_reasons[doc.error or "unknown"] += 1
            continue
        report.input_bytes += len(doc.text.encode("utf-8", errors="replace"))
        text = normalize(doc.text)
        rule = quality_rule(text, content, rules)
        if rule:
            report.removed[rule] += 1
            continue
        digest = text_hash(text)
        if digest in seen:
            report.duplicate_docs += 1
            continue
        nbytes = len(text.encode("utf-8"))
        if max_bytes and report.kept_bytes + nbytes > max_bytes:
            report.capped_docs += 1
            continue
        seen[digest] = doc.doc_id
        report.kept_docs += 1
        report.kept_bytes += nbytes
        split = "validation" if is_eval(digest, eval_fraction) else "train"
        report.eval_docs += split == "validation"
        yield split, {"source": doc.source, "id": doc.doc_id, "text": text}


def write_report(reports: dict[str, SourceReport], path: pathlib.Path) -> dict:
    out = {}
    for name, r in reports.items():
        d = dataclasses.asdict(r)
        d["removed"] = dict(r.removed)
        d["unreadable_reasons"] = dict(r.unreadable_reasons)
        out[name] = d
    path.write_text(json.dumps(out, indent=2))
    return out
