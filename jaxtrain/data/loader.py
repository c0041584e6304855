"""The Grain input pipeline: per-process shard, shuffle, mix sources, pack, batch.

Packing is Grain's concat-then-split: documents are concatenated and cut at
`seq_len`, so no token is dropped or padded away in training; every row
carries segment ids (1, 2, ... per document piece, 0 for padding) and the
attention mask is built from them. Positions restart at 0 for each piece in
a row, which is what both RoPE (relative) and learned positions need.
The returned iterator's state is JSON and goes into every checkpoint.
"""

from __future__ import annotations

import pathlib
from typing import Iterator, Sequence

import grain
import numpy as np
from grain.experimental import ConcatThenSplitIterDataset

from jaxtrain.data import shards


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
    return {
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
    return out


def _pack_and_batch(ds: grain.IterDataset, seq_len: int, batch_size: int, drop_remainder: bool,
                    pack: bool = True) -> grain.IterDataset:
    if pack:
        ds = ConcatThenSplitIterDataset(ds, length_struct={"inputs": seq_len, "targets": seq_len})
    else:
        ds = ds.map(lambda ex: _pad_one(ex, seq_len))
    return ds.batch(batch_size, drop_remainder=drop_remainder).map(_finalize)


def source_dataset(
    data_dir: pathlib.Path,
    split: str,
    source: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
    seed: int | None = 0,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    ds = grain.MapDataset.source(shards.data_source(data_dir, split, source))
    ds = ds[process_index::process_count]
    if seed is not None:
        ds = ds.shuffle(seed=seed)
    return ds.repeat(num_epochs).map(_to_example)


def mixture_weights(data_dir: pathlib.Path, sources: Sequence[str], weights: Sequence[float],
                    temperature: float = 0.0) -> list[float]:
    """Configured weights; sources with weight 0 take their natural share of train tokens, or with
    temperature T > 0 a share ~ n_tokens^(1/T) (T > 1 flattens the mixture toward small sources)."""
    counts = shards.token_counts(data_dir)
    natural = [counts[shards.split_name("train", s)]["tokens"] for s in sources]
    if temperature > 0:
        natural = [n ** (1.0 / temperature) for n in natural]
    total = sum(natural)
    out = [w if w > 0 else n / total for w, n in zip(weights, natural)]
    norm = sum(out)
    return [w / norm for w in out]


def train_iterator(
    data_dir: pathlib.Path,
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
) -> grain.DatasetIterator:
    """Infinite, shuffled, mixed, packed batches of this process's share of the global batch."""
    per_source = [
        source_dataset(
            data_dir, "train", s, process_index=process_index, process_count=process_count, seed=seed + i
        ).to_iter_dataset()
        for i, s in enumerate(sources)
    ]
    mixed = per_source[0] if len(per_source) == 1 else grain.IterDataset.mix(per_source, list(weights))
    ds = _pack_and_batch(mixed, seq_len, batch_size, drop_remainder=True, pack=pack)
    if num_threads > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=num_threads)
    return iter(ds)


def eval_batches(
    data_dir: pathlib.Path,
    source: str,
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict]:
    """One ordered pass over a source's held-out split; the last batch is padded (loss_mask 0)."""
    ds = source_dataset(
        data_dir, "validation", source, process_index=process_index, process_count=process_count, seed=None, num_epochs=1
    ).to_iter_dataset()
    for i, batch in enumerate(_pack_and_batch(ds, seq_len, batch_size, drop_remainder=False)):
        if i >= max_batches:
            return
        n = batch["inputs"].shape[0]
        if n < batch_size:
            batch = {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        yield batch
