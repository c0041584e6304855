"""The learned quality classifier (#20): fastText trained inside the Beam curation on the run's own
documents, cross-fitted, deterministic, applied by threshold or kept fraction, reported and refused
when misconfigured."""

import json
import math
import random
import re

import pytest
from pydoc_data.topics import topics

from jaxtrain.data import clean, curate, curation_report, quality, web
from jaxtrain.data import sample_crawl
from jaxtrain.data.config import DataConfig, MixtureStage, QualityClassifierConfig, SourceConfig
from jaxtrain.errors import ConfigError


def _corpus(tmp_path):
    """reference: Python reference-manual topics. crawl: other topics (good) and shop spam pages (bad)."""
    names = sorted(k for k, v in topics.items() if len(v) > 600)
    rng = random.Random(0)
    write = lambda path, texts: path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))  # noqa: E731
    write(tmp_path / "reference.jsonl", [topics[k] for k in names[:60]])
    good = [topics[k] for k in names[60:100]]
    spam = [web.html_text(sample_crawl.spam_html(rng).encode()) for _ in range(40)]
    write(tmp_path / "crawl.jsonl", good + spam)
    return len(good), spam


def _curate(tmp_path, out, **qc):
    d = DataConfig(sources=(SourceConfig(name="crawl", type="files", path=str(tmp_path / "crawl.jsonl"), filters=()),
                            SourceConfig(name="reference", type="files", path=str(tmp_path / "reference.jsonl"),
                                         content="docs")),
                   near_dedup=False, quality_classifier=QualityClassifierConfig(reference=("reference",), **qc))
    curate.run(d, out)
    ledger = [json.loads(line) for p in clean.ledger_files(out) for line in p.open()]
    meta = json.loads((out / quality.META_FILE).read_text())
    return d, ledger, meta


def test_the_classifier_keeps_the_reference_like_documents_and_reports_itself(tmp_path):
    n_good, spam = _corpus(tmp_path)
    d, ledger, meta = _curate(tmp_path, tmp_path / "kf", keep_fraction=0.5)
    crawl = [e for e in ledger if e["source"] == "crawl"]
    assert all("quality_score" in e for e in crawl)  # every filtered document scored, in the ledger
    assert not any("quality_score" in e for e in ledger if e["source"] == "reference")  # positives are not filtered
    kept = [e for e in crawl if e["bucket"] == "kept"]
    assert len(kept) == math.ceil(0.5 * len(crawl))  # exactly the kept fraction
    removed = [e for e in crawl if e["bucket"] == "removed"]
    assert {e["reason"] for e in removed} == {quality.RULE}
    # Out-of-fold scores (each document judged by the model that did not train on it) separate prose from spam.
    scores = {e["id"]: e["quality_score"] for e in crawl}
    good_ids = [e["id"] for e in crawl if int(e["id"].rsplit(":", 1)[-1]) <= n_good]
    assert sum(scores[i] >= 0.5 for i in good_ids) >= 0.9 * n_good, scores
    assert meta["accuracy"] >= 0.9 and meta["balanced_accuracy"] >= 0.9 and meta["folds"] == 2 and meta["train_positive"] > 0 and meta["train_negative"] > 0
    report = curation_report.build(clean.ledger_files(tmp_path / "kf"), d.source_names, None, meta)
    qc = report["crawl"]["quality_classifier"]
    assert qc["scored_docs"] == len(crawl) and sum(qc["score_histogram"]) == len(crawl)
    assert qc["held_out_accuracy"] == meta["accuracy"] and report["crawl"]["removed"][quality.RULE] == len(removed)
    assert "quality classifier: documents scored" in curation_report.markdown(report)
    # The cleaned corpus carries the score beside the text (provenance-style), never in it.
    rows = [json.loads(line) for p in clean.split_files(tmp_path / "kf", "crawl", "train") for line in p.open()]
    assert rows and all("quality_score" in r and "quality_score" not in r["text"] for r in rows)


def test_the_classifier_is_deterministic_and_a_threshold_removes_the_spam(tmp_path):
    _, spam = _corpus(tmp_path)
    _, ledger_a, meta_a = _curate(tmp_path, tmp_path / "a", threshold=0.5)
    _, ledger_b, meta_b = _curate(tmp_path, tmp_path / "b", threshold=0.5)
    assert meta_a["model_sha256"] == meta_b["model_sha256"] and meta_a["trained_on_digest"] == meta_b["trained_on_digest"]
    assert sorted(map(json.dumps, ledger_a)) == sorted(map(json.dumps, ledger_b))
    crawl = [e for e in ledger_a if e["source"] == "crawl"]
    below = [e for e in crawl if e["quality_score"] < 0.5]
    assert all(e["bucket"] == "removed" and e["reason"] == quality.RULE for e in below)
    assert all(e["bucket"] == "kept" for e in crawl if e["quality_score"] >= 0.5)
    assert len(below) >= 0.9 * len(spam)


@pytest.mark.parametrize("qc, message", [
    ({"reference": ["nope"]}, "data.quality_classifier.reference: unknown source(s) ['nope']"),
    ({"reference": ["a"], "apply_to": ["a"]}, "are in both reference and apply_to"),
    ({"apply_to": ["a"]}, "data.quality_classifier.apply_to: set data.quality_classifier.reference too"),
    ({"reference": ["a", "b"]}, "nothing to filter"),
    ({"reference": ["a"], "keep_fraction": 1.5}, "data.quality_classifier.keep_fraction: must be in [0, 1)"),
    ({"reference": ["a"]}, "data.quality_classifier: set one of threshold (.*) or keep_fraction (.*), not neither"),
    ({"reference": ["a"], "threshold": 0.7, "keep_fraction": 0.3}, "set one of threshold .* not both"),
])
def test_a_misconfigured_classifier_is_refused_before_any_work(qc, message):
    sources = (SourceConfig(name="a", type="files", path="x"), SourceConfig(name="b", type="files", path="y"))
    pattern = message if ".*" in message else re.escape(message)
    with pytest.raises(ConfigError, match=pattern):
        DataConfig(sources=sources, quality_classifier=QualityClassifierConfig(**{k: tuple(v) if isinstance(v, list)
                                                                                  else v for k, v in qc.items()}))


def test_a_held_out_source_is_never_trained_on():
    with pytest.raises(ConfigError, match="at least one must be trained on"):
        DataConfig(sources=(SourceConfig(name="stdlib_docs", train=False),))
    with pytest.raises(ConfigError, match=r"data.mixture_schedule\[0\].weights: source\(s\) \['stdlib_docs'\] have train: false"):
        DataConfig(sources=(SourceConfig(name="stdlib_code"), SourceConfig(name="stdlib_docs", train=False)),
                   mixture_schedule=(MixtureStage(step=5, weights=(1.0, 1.0)),))


def test_too_few_documents_to_train_on_stop_curation_in_one_line(tmp_path):
    from jaxtrain.data import prepare
    from jaxtrain.rundir import RunDir

    _corpus(tmp_path)
    few = [topics[k] for k in sorted(topics) if len(topics[k]) > 600][:3]
    (tmp_path / "reference.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in few))
    d = DataConfig(sources=(SourceConfig(name="crawl", type="files", path=str(tmp_path / "crawl.jsonl"), filters=()),
                            SourceConfig(name="reference", type="files", path=str(tmp_path / "reference.jsonl"),
                                         content="docs")),
                   near_dedup=False, quality_classifier=QualityClassifierConfig(reference=("reference",), threshold=0.5))
    with pytest.raises(ConfigError, match=r"^data.quality_classifier: too few kept documents to train on: [0-3] in "
                                          r"reference \['reference'\], \d+ in apply_to \['crawl'\] \(at least 10 each\)"):
        prepare.prepare_corpus(d, RunDir(tmp_path / "run"))
