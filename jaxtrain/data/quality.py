"""A learned quality filter, DCLM-style: a fastText classifier trained on this run's own data, inside
the curation pipeline (Beam), then applied as a rule.

Positives are the kept documents of the sources named `data.quality_classifier.reference` (text the
user trusts); negatives are the kept documents of the sources it filters (`apply_to`: a sample of the
crawl). Both are taken after the heuristics and the dedup, as DCLM did (its negatives were RefinedWeb-
filtered crawl). The sample is deterministic (the `max_examples` documents with the smallest text hash per
class) and split by hash into two folds; one fastText model trains on each fold (one thread, fixed
seed: the same inputs give the same models on any runner), and every document is scored by the model
that did not train on it (cross-fitting). Without it the crawl documents that were negatives are
scored by a model that memorized them, and on a small crawl that is all of them. The accuracy
reported is out-of-fold: each example judged by the model that never saw it. The models are written
into the curated directory (`quality_classifier.{0,1}.bin`) with `quality_classifier.json`: the
digest of the examples they were trained on, counts, hyperparameters and the out-of-fold accuracy.

Each document of an `apply_to` source gets `quality_score` = P(reference-like) in its ledger entry;
it is removed (reason `quality_classifier`) below `threshold`, or outside the top `keep_fraction` of
its source by score (exact: ties broken by the text hash).

fastText: `fasttext-modern` (a maintained fork of facebookresearch/fastText with cp311/cp312 wheels
and numpy 2 support; the upstream `fasttext` wheel breaks under numpy 2). Training is single-machine
in fastText itself (DCLM trained it the same way); Beam runs the sampling, the training step once,
and the scoring on every worker.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator

import apache_beam as beam
import fasttext
import numpy as np
from etils import epath

MODEL_FILE = "quality_classifier.{fold}.bin"
FOLDS = 2  # cross-fitting: each document is scored by the model that did not train on it
MIN_CLASS_DOCS = 10  # fewer kept documents in a class than this: no classifier (it could only memorize)
META_FILE = "quality_classifier.json"
RULE = "quality_classifier"  # the ledger reason
POSITIVE, NEGATIVE = "__label__reference", "__label__crawl"
MAX_WORDS = 2_000  # words of a document the classifier reads: enough to judge a page, bounds the sample's memory

# fastText hyperparameters. DCLM's classifier: bigrams, default dimension, a few epochs.
HYPERPARAMETERS = {
    "wordNgrams": 2,  # bigrams: DCLM's setting; word order carries much of "quality" (phrasing, spam patterns)
    "dim": 64,  # small: a binary task on at most tens of thousands of documents needs no more
    "lr": 0.5,  # fastText's advice for small data (its default 0.1 learned nothing on 435 documents: all scores equal)
    "minCount": 1,  # keep rare words: the sample is small
    "bucket": 1 << 18,  # hash buckets for the bigrams: 262k x 64 floats = 64 MB model (the default 2M is 512 MB)
    "thread": 1,  # one thread: fastText's hogwild updates are not deterministic across threads
    "seed": 0,
}
MIN_UPDATES = 3_000  # epochs = ceil(this / documents per fold), within [5, 50]. Measured on the demo crawl (350
# documents a fold): ~9 epochs gives soft scores that rank every spam page below every guide page (held-out
# accuracy 0.92); 50 epochs saturates the scores at 0 and 1 (accuracy 0.93, but the crawl ties at 0, so a
# kept fraction cuts through spam at random). 5 epochs at lr 0.1 on 435 documents learned nothing.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def fasttext_line(text: str) -> str:
    """A document as one fastText input line: lower-cased words and punctuation, at most MAX_WORDS."""
    return " ".join(_TOKEN_RE.findall(text.lower())[:MAX_WORDS])


def _hash(e: dict) -> int:
    return int(e["digest"][16:31], 16)  # 60 bits (Beam codes ints as signed 64), independent of the split and cap bits


def _example(e: dict, reference: frozenset) -> Iterator[tuple[str, tuple]]:
    label = POSITIVE if e["source"] in reference else NEGATIVE
    h = _hash(e)
    yield label, (h, h % FOLDS, e["digest"], fasttext_line(e["text"]))


def score_lines(model, lines: list[str]) -> np.ndarray:
    labels, probs = model.predict(lines, k=2)
    return np.array([dict(zip(ls, ps)).get(POSITIVE, 0.0) for ls, ps in zip(labels, probs)], dtype=np.float64)


def _fit(rows: list[tuple[str, str]], seed: int, path: str):
    rng = np.random.default_rng(seed)  # fastText reads in file order: shuffle, deterministically
    with open(path, "w") as f:
        f.writelines(f"{rows[i][0]} {rows[i][1]}\n" for i in rng.permutation(len(rows)))
    epochs = min(50, max(5, math.ceil(MIN_UPDATES / max(len(rows), 1))))
    return fasttext.train_supervised(path, verbose=0, epoch=epochs, **HYPERPARAMETERS), epochs


def model_file(fold: int) -> str:
    return MODEL_FILE.format(fold=fold)


def train(groups: list[tuple[str, list[tuple]]], out_dir: str, reference: tuple[str, ...], apply_to: tuple[str, ...]
          ) -> dict:
    """The sampled examples of both classes -> one model per fold and their meta; returns the meta. Too few
    examples: a meta holding only `error` (nothing is scored; curation then stops with that line)."""
    by_label = dict(groups)
    found = {label: len(by_label.get(label, [])) for label in (POSITIVE, NEGATIVE)}
    if min(found.values()) < MIN_CLASS_DOCS:
        meta = {"error": f"data.quality_classifier: too few kept documents to train on: {found[POSITIVE]} in "
                         f"reference {list(reference)}, {found[NEGATIVE]} in apply_to {list(apply_to)} (at least "
                         f"{MIN_CLASS_DOCS} each); name sources with more kept text, or remove the classifier."}
        (epath.Path(out_dir) / META_FILE).write_text(json.dumps(meta, indent=1))
        return meta
    rows = sorted((label, ex) for label, exs in by_label.items() for ex in exs)
    digest = hashlib.sha256("\n".join(f"{label} {ex[2]}" for label, ex in rows).encode()).hexdigest()
    out = epath.Path(out_dir)
    right, epochs, shas = {POSITIVE: 0, NEGATIVE: 0}, 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for fold in range(FOLDS):
            model, epochs = _fit([(label, ex[3]) for label, ex in rows if ex[1] == fold], int(digest[:8], 16) + fold,
                                 os.path.join(tmp, "train.txt"))
            unseen = [(label, ex[3]) for label, ex in rows if ex[1] != fold]
            scores = score_lines(model, [line for _, line in unseen])
            for (label, _), score in zip(unseen, scores):
                right[label] += (score >= 0.5) == (label == POSITIVE)
            local = os.path.join(tmp, model_file(fold))
            model.save_model(local)
            (out / model_file(fold)).write_bytes(open(local, "rb").read())
            shas.append(hashlib.sha256((out / model_file(fold)).read_bytes()).hexdigest())
    meta = {"trained_on_digest": digest, "train_docs": len(rows), "train_positive": found[POSITIVE],
            "train_negative": found[NEGATIVE], "folds": FOLDS, "accuracy": round(sum(right.values()) / len(rows), 4),
            # the mean of the two classes' recall: 0.5 for a classifier that always answers the bigger class
            "balanced_accuracy": round((right[POSITIVE] / found[POSITIVE] + right[NEGATIVE] / found[NEGATIVE]) / 2, 4),
            "majority_rate": round(max(found.values()) / len(rows), 4),
            "held_out_docs": len(rows), "hyperparameters": {**HYPERPARAMETERS, "epoch": epochs}, "max_words": MAX_WORDS,
            "model_files": [model_file(f) for f in range(FOLDS)], "model_sha256": shas}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return meta


class _Score(beam.DoFn):
    """Adds `quality_score` to the documents of the filtered sources, each scored by the fold model that
    did not train on it (the models are loaded once per worker)."""

    def __init__(self, out_dir: str, apply_to: frozenset):
        self.out_dir, self.apply_to, self.models, self.loaded = out_dir, apply_to, [], None

    def _load(self, shas: list[str]) -> list:
        if self.loaded != shas:
            self.models = []
            with tempfile.TemporaryDirectory() as tmp:  # fastText loads from a local path; the model may be on gs://
                for fold in range(FOLDS):
                    local = os.path.join(tmp, model_file(fold))
                    with open(local, "wb") as f:
                        f.write((epath.Path(self.out_dir) / model_file(fold)).read_bytes())
                    self.models.append(fasttext.load_model(local))
            self.loaded = shas
        return self.models

    def process(self, batch: list[dict], meta: dict) -> Iterator[dict]:
        if "error" in meta:  # no model: curation stops after the pipeline with meta["error"]
            yield from batch
            return
        yield from (e for e in batch if e["source"] not in self.apply_to)
        models = self._load(meta["model_sha256"])
        for fold in range(FOLDS):
            mine = [e for e in batch if e["source"] in self.apply_to and _hash(e) % FOLDS != fold]
            if mine:
                scores = score_lines(models[fold], [fasttext_line(e["text"]) for e in mine])
                yield from ({**e, "quality_score": round(float(s), 6)} for e, s in zip(mine, scores))


def _cutoffs(item: tuple[str, Iterable[tuple[float, int]]], keep_fraction: float) -> Iterator[tuple[str, tuple]]:
    """The lowest (score, hash) a source keeps so that exactly ceil(keep_fraction x n) documents stay."""
    source, scored = item
    scored = sorted(scored, reverse=True)
    yield source, scored[max(1, math.ceil(keep_fraction * len(scored))) - 1]


def _decide(e: dict, threshold: float, cutoffs: dict) -> dict:
    if "quality_score" not in e:
        return e
    keep = ((e["quality_score"], _hash(e)) >= cutoffs[e["source"]] if cutoffs
            else e["quality_score"] >= threshold)
    return e if keep else {**e, "bucket": "removed", "reason": RULE}


def apply(kept: beam.PCollection, cfg, apply_to: tuple[str, ...], out_dir: str) -> beam.PCollection:
    """Train on `kept` (positives: cfg.reference sources; negatives: apply_to sources), score the apply_to
    documents and mark those below the bar removed. Returns every entry of `kept`, marked."""
    reference, targets = frozenset(cfg.reference), frozenset(apply_to)
    examples = (kept | "QC examples" >> beam.Filter(lambda e: e["source"] in reference | targets)
                | "QC label" >> beam.FlatMap(_example, reference)
                | "QC sample" >> beam.combiners.Top.SmallestPerKey(cfg.max_examples, key=lambda ex: ex[0])
                | "QC classes" >> beam.combiners.ToList())
    meta = examples | "QC train" >> beam.Map(train, out_dir, tuple(sorted(reference)), tuple(sorted(targets)))
    scored = (kept | "QC batch" >> beam.BatchElements(min_batch_size=16, max_batch_size=256)
              | "QC score" >> beam.ParDo(_Score(out_dir, targets), beam.pvalue.AsSingleton(meta)))
    cutoffs: object = {}
    if cfg.keep_fraction:
        cutoffs = beam.pvalue.AsDict(
            scored | "QC scored" >> beam.Filter(lambda e: "quality_score" in e)
            | "QC by source" >> beam.Map(lambda e: (e["source"], (e["quality_score"], _hash(e))))
            | "QC group" >> beam.GroupByKey() | "QC cutoff" >> beam.FlatMap(_cutoffs, cfg.keep_fraction))
    return scored | "QC decide" >> beam.Map(_decide, cfg.threshold, cutoffs)
