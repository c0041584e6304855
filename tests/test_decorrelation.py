"""Rows of a batch come from independent places in the corpus: on the demo corpus, two rows of one batch
share a document no more often than under a uniform shuffle of all rows (the old sequential packing put
runs of consecutive rows of one long document into the same batch)."""

import dataclasses

import numpy as np
import pytest

from jaxtrain import pipeline
from jaxtrain.config import load_config
from jaxtrain.data import loader, shards
from jaxtrain.data.rows import RowReader
from jaxtrain.data.schedule import MixtureSchedule, row_stages

BATCHES, B, L = 1500, 16, 256


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "run"
    cfg = load_config("demo")
    # The loader's property, on the demo's embedded sources (its web source needs a crawl built first; the
    # rows' independence does not depend on which text fills them).
    embedded = tuple(s for s in cfg.data.sources if s.type == "embedded")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, sources=embedded, quality_classifier=dataclasses.replace(cfg.data.quality_classifier, reference=(),
                                                                           apply_to=(), keep_fraction=0.0)))
    pipeline.prepare(cfg, run)
    return run, cfg


def _same_document_fraction(batches) -> float:
    same = pairs = 0
    for rows in batches:  # each row: the set of (source, document) it holds pieces of
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                same += bool(rows[i] & rows[j])
                pairs += 1
    return same / pairs


@pytest.mark.slow  # a 1,500-batch statistic on the demo corpus (21 s): a soak, kept out of the 20-minute default run
def test_same_document_pairs_within_a_batch_are_as_rare_as_under_a_uniform_shuffle(demo_data):
    run, cfg = demo_data
    sources = cfg.data.source_names
    weights = loader.mixture_weights(shards.token_counts(run), sources, [0.0] * len(sources))
    readers = [RowReader(run, "train", s, L, source_index=i) for i, s in enumerate(sources)]
    schedule = MixtureSchedule(row_stages([(0, weights)], B))

    def docs(i: int, c: int) -> set:
        return {(i, d) for d in readers[i].documents_of(c)}

    picked = [[schedule[t * B + r] for r in range(B)] for t in range(BATCHES)]
    loaded = [[docs(i, readers[i].training_row(k, cfg.data.shuffle_seed + i)) for i, k in rows] for rows in picked]
    rng = np.random.default_rng(0)  # the same sources per batch, rows drawn uniformly from each source's epoch
    uniform = [[docs(i, int(rng.integers(readers[i].epoch_start(1)))) for i, _ in rows] for rows in picked]
    sequential = [[docs(i, k) for i, k in rows] for rows in picked]  # no shuffle: rows in stream order
    ours, baseline, unshuffled = map(_same_document_fraction, (loaded, uniform, sequential))
    print(f"same-document pairs within a batch: loader {ours:.4%}, uniform shuffle {baseline:.4%}, "
          f"sequential {unshuffled:.4%}")
    assert baseline > 0 and ours <= 2 * baseline
    assert unshuffled > 10 * baseline  # what packing without a row-level shuffle does
