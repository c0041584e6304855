"""The Grain input pipeline: per-process shard, shuffle, mix sources, pack, batch.

Packing is Grain's concat-then-split: documents are concatenated and cut at
`seq_len`, so no token is dropped or padded away in training; every row
carries segment ids (1, 2, ... per document piece, 0 for padding) and the
attention mask is built from them. Positions restart at 0 for each piece in
a row, which is what both RoPE (relative) and learned positions need.
Training rows also carry `source_ids` per token, so the loop can log the
realized mixture. The returned iterator's state is JSON and goes into every
checkpoint.
"""

from __future__ import annotations

import functools
from typing import Iterator, Sequence

import grain
import numpy as np
from grain.experimental import ConcatThenSplitIterDataset

from jaxtrain.data import shards
from jaxtrain.data.schedule import (
    ScheduledMixIterDataset,
    document_probabilities,
    draw_boundaries,
)
from jaxtrain.rundir import RunDir

# The batch every step consumes (each [batch, seq_len]): the one description that the
# train and eval steps, AOT compilation, empty batches and the task scorers build on.
BATCH_FIELDS: dict[str, type] = {
    "inputs": np.int32,
    "targets": np.int32,
    "segment_ids": np.int32,  # 1, 2, ... per packed document piece; 0 for padding
    "positions": np.int32,  # position within the document piece
    "loss_mask": np.float32,  # 1 where the target is a real token
}


def _to_example(record: dict) -> dict:
    tokens = np.asarray(record["tokens"], dtype=np.int32)
    return {"inputs": tokens[:-1], "targets": tokens[1:]}


def positions_from_segments(segment_ids_BxL: np.ndarray) -> np.ndarray:
    """Position within each document piece of a row (0 at every piece start)."""
    B, L = segment_ids_BxL.shape
    idx = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L))
    start = np.ones((B, L), dtype=bool)
    start[:, 1:] = segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1]
    start_idx = np.maximum.accumulate(np.where(start, idx, 0), axis=1)
    return (idx - start_idx).astype(np.int32)


def _finalize(packed: dict) -> dict:
    segment_ids = packed["inputs_segment_ids"].astype(np.int32)
    extra = {"source_ids": packed["source_ids"].astype(np.int32)} if "source_ids" in packed else {}
    return {**extra,
        "inputs": packed["inputs"].astype(np.int32),
        "targets": packed["targets"].astype(np.int32),
        "segment_ids": segment_ids,
        "positions": positions_from_segments(segment_ids),
        "loss_mask": (packed["targets_segment_ids"] != 0).astype(np.float32),
    }


def _pad_one(example: dict, seq_len: int) -> dict:
    """One document per row: truncated to seq_len, padded with segment id 0."""
    out = {}
    for key in ("inputs", "targets"):
        x = example[key][:seq_len]
        out[key] = np.pad(x, (0, seq_len - len(x)))
        out[f"{key}_segment_ids"] = np.pad(np.ones(len(x), np.int32), (0, seq_len - len(x)))
    if "source_ids" in example:
        out["source_ids"] = np.pad(example["source_ids"][:seq_len], (0, seq_len - len(example["source_ids"][:seq_len])))
    return out


def _pack_and_batch(ds: grain.IterDataset, seq_len: int, batch_size: int, drop_remainder: bool,
                    pack: bool = True, with_sources: bool = False) -> grain.IterDataset:
    if pack:
        lengths = {"inputs": seq_len, "targets": seq_len, **({"source_ids": seq_len} if with_sources else {})}
        ds = ConcatThenSplitIterDataset(ds, length_struct=lengths)
    else:
        ds = ds.map(lambda ex: _pad_one(ex, seq_len))
    return ds.batch(batch_size, drop_remainder=drop_remainder).map(_finalize)


def _tag_source(example: dict, source_index: int) -> dict:
    """Every token carries its source index, so the realized mixture can be measured per batch."""
    return {**example, "source_ids": np.full(example["inputs"].shape, source_index, np.int32)}


def realized_mixture(batch: dict, num_sources: int) -> np.ndarray:
    """Target tokens per source in a batch (padding excluded)."""
    ids = batch["source_ids"][batch["loss_mask"] > 0]
    return np.bincount(ids.ravel(), minlength=num_sources)


def source_dataset(
    run: RunDir,
    split: str,
    source: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
    seed: int | None = 0,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    ds = grain.MapDataset.source(shards.data_source(run, split, source))
    ds = ds[process_index::process_count]
    if seed is not None:
        ds = ds.shuffle(seed=seed)
    return ds.repeat(num_epochs).map(_to_example)


def mixture_weights(counts: dict, sources: Sequence[str], weights: Sequence[float],
                    temperature: float = 0.0) -> list[float]:
    """Configured weights; sources with weight 0 take their natural share of train tokens, or with
    temperature T > 0 a share ~ n_tokens^(1/T) (T > 1 flattens the mixture toward small sources).
    counts: `shards.token_counts(run)`."""
    natural = [counts[shards.split_name("train", s)]["tokens"] for s in sources]
    if temperature > 0:
        natural = [n ** (1.0 / temperature) for n in natural]
    total = sum(natural)
    out = [w if w > 0 else n / total for w, n in zip(weights, natural)]
    norm = sum(out)
    return [w / norm for w in out]


def mean_doc_tokens(counts: dict, sources: Sequence[str]) -> list[float]:
    return [counts[shards.split_name("train", s)]["tokens"] / max(counts[shards.split_name("train", s)]["docs"], 1)
            for s in sources]


def train_iterator(
    run: RunDir,
    sources: Sequence[str],
    weights: Sequence[float],
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 0,
    pack: bool = True,
    schedule: Sequence[tuple[int, Sequence[float]]] = (),
    read_threads: int = 0,
) -> grain.DatasetIterator:
    """Infinite, shuffled, mixed, packed batches of this process's share of the global batch."""
    doc_tokens = mean_doc_tokens(shards.token_counts(run), sources)
    per_source = [
        source_dataset(
            run, "train", s, process_index=process_index, process_count=process_count, seed=seed + i
        ).map(functools.partial(_tag_source, source_index=i)).to_iter_dataset(grain.ReadOptions(num_threads=read_threads))
        for i, s in enumerate(sources)
    ]
    if len(per_source) == 1:
        mixed = per_source[0]
    elif schedule:  # (step, token weights) stages after the first
        stages = draw_boundaries([(0, weights), *schedule], doc_tokens, batch_size * seq_len)
        mixed = ScheduledMixIterDataset(per_source, stages)
    else:
        mixed = grain.IterDataset.mix(per_source, document_probabilities(weights, doc_tokens))
    ds = _pack_and_batch(mixed, seq_len, batch_size, drop_remainder=True, pack=pack, with_sources=True)
    if num_threads > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=num_threads)
    return iter(ds)


def empty_batch(batch_size: int, seq_len: int) -> dict:
    """A batch that contributes nothing (loss_mask 0): keeps collective step counts equal."""
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
    process_index: int = 0,
    process_count: int = 1,
    read_threads: int = 0,
) -> Iterator[dict]:
    """One ordered pass over a source's held-out split; the last batch is padded (loss_mask 0)."""
    ds = source_dataset(
        run, "validation", source, process_index=process_index, process_count=process_count, seed=None, num_epochs=1
    ).to_iter_dataset(grain.ReadOptions(num_threads=read_threads))
    for i, batch in enumerate(_pack_and_batch(ds, seq_len, batch_size, drop_remainder=False)):
        if i >= max_batches:
            return
        n = batch["inputs"].shape[0]
        if n < batch_size:
            batch = {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        yield batch
