"""The Grain input pipeline: packed rows by random access, mixed by a step schedule, batched per process.

Every source's split is a Grain `MapDataset` of packed rows (`data/rows.py`),
shuffled at the row level with a new order each epoch; `MixtureSchedule`
(`data/schedule.py`) interleaves the sources into one global row stream in
the configured token shares. Step t consumes global rows t*B ... t*B + B - 1,
and each process builds only the rows its devices hold (`rows` below: from the
mesh, see `parallel.mesh.local_rows`). The data order therefore does not
depend on the mesh or the number of processes: hosts that share a shard load
the same rows, a single-process run sees the same global batches as a pod,
and the iterator's state is the next step, the same on every process, so a
run resumes on any number of processes. Rows of one batch come from
independent places in the corpus (no run of consecutive rows from one long
document).

Every row carries segment ids (1, 2, ... per document piece, 0 for padding)
and positions that restart at 0 for each piece, which is what both RoPE
(relative) and learned positions need; training rows also carry `source_ids`
per token, so the loop can log the realized mixture.
"""

from __future__ import annotations

import sys
from typing import Iterator, Sequence

import grain
import numpy as np

from jaxtrain.data import shards
from jaxtrain.data.config import DataConfig
from jaxtrain.data.rows import RowReader
from jaxtrain.data.schedule import MixtureSchedule, document_probabilities, row_stages
from jaxtrain.rundir import RunDir

REMOTE_READ_THREADS = 16  # rows read in flight when the token shards are on gs:// (data.read_threads=0)

# The batch every step consumes (each [batch, seq_len]): the one description that the
# train and eval steps, AOT compilation, empty batches and the task scorers build on.
BATCH_FIELDS: dict[str, type] = {
    "inputs": np.int32,
    "targets": np.int32,
    "segment_ids": np.int32,  # 1, 2, ... per packed document piece; 0 for padding
    "positions": np.int32,  # position within the document piece
    "loss_mask": np.float32,  # 1 where the target is a real token
}


def positions_from_segments(segment_ids_BxL: np.ndarray) -> np.ndarray:
    """Position within each document piece of a row (0 at every piece start)."""
    B, L = segment_ids_BxL.shape
    idx = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L))
    start = np.ones((B, L), dtype=bool)
    start[:, 1:] = segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1]
    start_idx = np.maximum.accumulate(np.where(start, idx, 0), axis=1)
    return (idx - start_idx).astype(np.int32)


def collate(rows: Sequence[dict]) -> dict:
    """Rows from RowReader -> one batch with every BATCH_FIELDS entry (and source_ids)."""
    stacked = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    segment_ids = stacked["segment_ids"]
    return {**stacked, "positions": positions_from_segments(segment_ids),
            "loss_mask": (segment_ids != 0).astype(np.float32)}


def realized_mixture(batch: dict, num_sources: int) -> np.ndarray:
    """Target tokens per source in a batch (padding excluded)."""
    ids = batch["source_ids"][batch["loss_mask"] > 0]
    return np.bincount(ids.ravel(), minlength=num_sources)


def mixture_weights(counts: dict, sources: Sequence[str], weights: Sequence[float],
                    temperature: float = 0.0, trained: Sequence[bool] | None = None) -> list[float]:
    """Token shares per source. Explicit weights (> 0) are final shares: a source weighted 0.5 trains on half
    the tokens, and the sources without a weight share the rest in proportion to their train tokens (or, with
    temperature T > 0, to n_tokens^(1/T): T > 1 flattens the mixture toward small sources). When every trained
    source has a weight they are relative ([1, 3] is 25% and 75%). Sources not `trained` (train: false) get 0.
    DataConfig refuses explicit weights that leave nothing to the unweighted sources. counts:
    `shards.token_counts(run)`."""
    trained = [True] * len(sources) if trained is None else list(trained)
    natural = [counts[shards.split_name("train", s)]["tokens"] if t else 0 for s, t in zip(sources, trained)]
    if temperature > 0:
        natural = [n ** (1.0 / temperature) for n in natural]
    explicit = [w if t and w > 0 else 0.0 for w, t in zip(weights, trained)]
    free = [n if t and w <= 0 else 0.0 for w, n, t in zip(weights, natural, trained)]
    if not any(free):
        return [w / sum(explicit) for w in explicit]
    rest = 1.0 - sum(explicit) if any(explicit) else 1.0
    return [w if w > 0 else rest * n / sum(free) for w, n in zip(explicit, free)]


def mean_doc_tokens(counts: dict, sources: Sequence[str]) -> list[float]:
    return [counts[shards.split_name("train", s)]["tokens"] / max(counts[shards.split_name("train", s)]["docs"], 1)
            for s in sources]


def source_rows(run: RunDir, split: str, source: str, *, seq_len: int, source_index: int = 0, pack: bool = True,
                seed: int | None = 0) -> grain.MapDataset:
    """A source's rows as a random-access dataset: with a seed, the endless shuffled training rows (every
    token once per epoch); without, one ordered pass whose last row is padded."""
    reader = RowReader(run, split, source, seq_len, source_index=source_index, pack=pack)
    if reader.num_docs == 0:
        raise ValueError(f"{source} ({split}): no documents; every source needs training text.")
    if seed is None:
        return grain.MapDataset.range(reader.num_rows()).map(reader.row)
    return grain.MapDataset.range(sys.maxsize).map(lambda k: reader.shuffled(k, seed))


class TrainBatches:
    """This process's rows of every global batch, in step order.

    The state is the next step (and the global batch size it counts in): the
    same on every process, so it restores on any number of processes."""

    def __init__(self, rows: grain.MapDataset, global_batch: int, local_rows: Sequence[int], *,
                 read_threads: int = 0, prefetch: int = 0):
        self.global_batch, self.local_rows = global_batch, list(local_rows)
        steps = grain.MapDataset.range(sys.maxsize // global_batch)
        batches = steps.map(lambda t: collate([rows[t * global_batch + r] for r in self.local_rows]))
        ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(read_threads, 1)))
        if prefetch > 0:
            ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
        self._iterator = iter(ds)

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> dict:
        return next(self._iterator)

    def get_state(self) -> dict:
        return {"next_step": self._iterator.get_state()["next_index"], "global_batch": self.global_batch}

    def set_state(self, state: dict) -> None:
        if state.get("global_batch") != self.global_batch:
            raise ValueError(f"the data position was saved for a global batch of {state.get('global_batch')} rows, "
                             f"this run has {self.global_batch}")
        self._iterator.set_state({"next_index": int(state["next_step"])})


def train_iterator(
    run: RunDir,
    sources: Sequence[str],
    weights: Sequence[float],
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    rows: Sequence[int] | None = None,
    num_threads: int = 0,
    pack: bool = True,
    schedule: Sequence[tuple[int, Sequence[float]]] = (),
    read_threads: int = 0,
    counts: dict | None = None,
) -> TrainBatches:
    """Endless, shuffled, mixed, packed batches: this process's `rows` (default: all) of each global batch.
    counts: `shards.token_counts(run)`, when the caller has read it already."""
    counts = shards.token_counts(run) if counts is None else counts
    per_source = [source_rows(run, "train", s, seq_len=seq_len, source_index=i, pack=pack, seed=seed + i)
                  for i, s in enumerate(sources)]
    step_weights = [(0, list(weights)), *[(step, list(w)) for step, w in schedule]]
    if not pack:  # a row is one document: token shares -> document shares
        doc_tokens = mean_doc_tokens(counts, sources)
        step_weights = [(step, document_probabilities(w, doc_tokens)) for step, w in step_weights]
    mixed = grain.MapDataset.select_from_datasets(per_source, MixtureSchedule(row_stages(step_weights, batch_size)))
    return TrainBatches(mixed, batch_size, range(batch_size) if rows is None else rows,
                        read_threads=read_threads, prefetch=num_threads)


def training_batches(data: DataConfig, run: RunDir, *, batch_size: int, rows: Sequence[int] | None = None
                     ) -> tuple[TrainBatches, list[float]]:
    """The training input of a run, from its data config: this process's `rows` of every global batch of
    `batch_size` sequences, and the resolved mixture weights (the one entry point the training loop uses)."""
    counts = shards.token_counts(run)
    weights = mixture_weights(counts, data.source_names, [s.weight for s in data.sources],
                              temperature=data.mixture_temperature, trained=[s.train for s in data.sources])
    iterator = train_iterator(
        run, data.source_names, weights, seq_len=data.seq_len, batch_size=batch_size, rows=rows,
        seed=data.shuffle_seed, num_threads=data.num_threads, pack=data.pack,
        schedule=[(s.step, s.weights) for s in data.mixture_schedule],
        # Object storage answers each read in milliseconds: read ahead in threads unless told otherwise.
        read_threads=data.read_threads or (REMOTE_READ_THREADS if RunDir(run).is_remote else 0), counts=counts)
    return iterator, weights


def empty_batch(batch_size: int, seq_len: int) -> dict:
    """A batch that contributes nothing (loss_mask 0)."""
    return {k: np.zeros((batch_size, seq_len), dtype) for k, dtype in BATCH_FIELDS.items()}


def whole_rows(inputs_BxL: np.ndarray, targets_BxL: np.ndarray, loss_mask_BxL: np.ndarray | None = None) -> dict:
    """A batch of unpacked rows (one sequence per row, from position 0), e.g. for scoring."""
    B, L = inputs_BxL.shape
    return {
        "inputs": inputs_BxL.astype(np.int32),
        "targets": targets_BxL.astype(np.int32),
        "segment_ids": np.ones((B, L), np.int32),
        "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy(),
        "loss_mask": np.ones((B, L), np.float32) if loss_mask_BxL is None else loss_mask_BxL.astype(np.float32),
    }


def eval_batches(
    run: RunDir,
    source: str,
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int,
    rows: Sequence[int] | None = None,
) -> Iterator[dict]:
    """One ordered pass over a source's held-out split in global batches of `batch_size` rows, of which this
    process builds `rows` (default: all); rows past the end are padding (loss_mask 0). Every process makes
    the same number of batches, whatever rows it holds."""
    reader = RowReader(run, "validation", source, seq_len)
    total = reader.num_rows()
    rows = range(batch_size) if rows is None else rows
    empty = {k: np.zeros(seq_len, np.int32) for k in ("inputs", "targets", "segment_ids", "source_ids")}
    for t in range(min(max_batches, -(-total // batch_size))):
        batch = collate([reader.row(t * batch_size + r) if t * batch_size + r < total else empty for r in rows])
        del batch["source_ids"]
        yield batch
