import gzip
import json

import pytest

from jaxtrain.config import ConfigError, load_config
from jaxtrain.data import clean, corpus, prepare

RULES = clean.CleanRules(min_chars=20, max_chars=1000, min_alpha_fraction=0.5)
PROSE = "The quick brown fox jumps over the lazy dog near the river bank today."


def _run(docs, content="prose", max_bytes=0):
    report = clean.SourceReport()
    kept = list(clean.clean_source(docs, content, RULES, {}, report, 0.3, max_bytes))
    return kept, report


def test_every_document_lands_in_one_bucket():
    docs = [
        corpus.Document("s", "a", PROSE),
        corpus.Document("s", "b", PROSE + "\r\n"),  # duplicate after normalization
        corpus.Document("s", "c", "short"),
        corpus.Document("s", "d", "1234 5678 9012 3456 7890 !!!! ####"),
        corpus.Document("s", "e", None, "binary file (NUL bytes)"),
        corpus.Document("s", "f", "x" * 2000),
        corpus.Document("s", "g", PROSE.replace("fox", "cat")),
    ]
    kept, report = _run(docs)
    assert [r["id"] for _, r in kept] == ["a", "g"]
    assert report.duplicate_docs == 1 and report.unreadable_docs == 1
    assert dict(report.removed) == {"too_short": 1, "low_alpha_fraction": 1, "too_long": 1}
    assert report.accounted() == report.input_docs == len(docs)


def test_dedup_is_global_across_sources():
    seen: dict = {}
    r1, r2 = clean.SourceReport(), clean.SourceReport()
    a = list(clean.clean_source([corpus.Document("one", "x", PROSE)], "prose", RULES, seen, r1, 0.0))
    b = list(clean.clean_source([corpus.Document("two", "y", PROSE)], "prose", RULES, seen, r2, 0.0))
    assert len(a) == 1 and b == [] and r2.duplicate_docs == 1


def test_eval_split_is_stable_and_hash_based():
    digest = clean.text_hash(PROSE)
    assert clean.is_eval(digest, 0.5) == clean.is_eval(digest, 0.5)
    splits = {clean.is_eval(clean.text_hash(f"doc {i}"), 0.1) for i in range(200)}
    assert splits == {True, False}


def test_file_source_reports_bad_lines_and_binary_files(tmp_path):
    (tmp_path / "a.txt").write_text(PROSE)
    (tmp_path / "b.bin").write_bytes(b"\x00\x01\x02" * 10)
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": PROSE + " one"}) + "\n{not json\n" + json.dumps({"body": "x"}) + "\n")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": PROSE + " two"}) + "\n")
    (tmp_path / "e.txt").write_bytes(b"caf\xe9 " + PROSE.encode())  # invalid UTF-8 is repaired
    docs = list(corpus.file_source("mine", str(tmp_path / "*")))
    errors = sorted(d.error for d in docs if d.text is None)
    assert errors == ["binary file (NUL bytes)", "no string field 'text'", "not JSON: Expecting property name enclosed in double quotes"]
    kept, report = _run(docs)
    assert len(kept) == 4 and report.unreadable_docs == 3 and report.accounted() == len(docs)


def test_glob_matching_nothing_is_refused_before_work(tmp_path):
    cfg = load_config("tiny", [f"data.sources=[{{name: mine, type: files, path: '{tmp_path}/*.txt'}}]"])
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.path: glob .* matches no files"):
        prepare.prepare_corpus(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "data").exists()


def test_embedded_sources_are_real_and_deterministic():
    first = [d.doc_id for _, d in zip(range(5), corpus.stdlib_code())]
    assert first == [d.doc_id for _, d in zip(range(5), corpus.stdlib_code())]
    doc = next(corpus.stdlib_docs())
    assert doc.doc_id.startswith("topic:") and len(doc.text) > 100
    meta = list(corpus.package_metadata())
    assert any(d.doc_id.startswith("jax:") for d in meta)
