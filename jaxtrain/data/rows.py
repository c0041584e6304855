"""Packed rows by random access: each source's token stream cut into `seq_len` rows.

A split's documents (BOS + ids + EOS, as the token shards store them) are
concatenated in their stored order into one stream of (input, target) pairs,
`len(doc) - 1` per document; training repeats that stream endlessly and cuts it
into rows of `seq_len` pairs, so row c holds pairs [c*L, (c+1)*L) and a row
that crosses the end of the stream continues at its start. Any row can be built
on its own from the few documents it overlaps, found by binary search on the
documents' cumulative lengths, so every process can read exactly the rows its
devices hold, in any order (Levanter-style; Grain's concat-then-split packer is
sequential, so a row could only be built after every row before it).

An epoch is the rows that start within one pass over the stream; they tile it,
so every token is trained on exactly once per epoch, and each epoch's rows are
visited in their own random order (Grain's `index_shuffle`, reseeded per epoch).
Because a pass is rarely a whole number of rows, the row boundaries shift from
one epoch to the next. Segment ids number the pieces of documents within a row
(1, 2, ...; 0 is padding) and positions restart at 0 for each piece, so
attention never crosses a document boundary.

With `pack=False` a row is one document, truncated to `seq_len` and padded.
"""

from __future__ import annotations

import collections
import threading

import numpy as np
from grain.experimental import index_shuffle

from jaxtrain.data import shards
from jaxtrain.rundir import RunDir

# Decoded documents kept per reader: a row reads 1-3 documents whole (a record is one document), so without
# a cache each row re-decodes a long document for `seq_len` of its tokens. 64 MiB holds a small corpus
# entirely and the recently touched long documents of a large one.
DOC_CACHE_BYTES = 64 * 2**20


class RowReader:
    """Rows of one split of one source: `row(c)` of the endless stream, `shuffled(k)` the k-th training row."""

    def __init__(self, run: RunDir, split: str, source: str, seq_len: int, *, source_index: int = 0,
                 pack: bool = True):
        self.source, self.seq_len, self.source_index, self.pack = source, seq_len, source_index, pack
        self._docs = shards.data_source(run, split, source)
        pairs = shards.doc_lengths(run, split, source).astype(np.int64) - 1  # (input, target) pairs per document
        self._ends = np.cumsum(pairs)  # stream offset just past each document
        self.total_pairs = int(self._ends[-1]) if len(self._ends) else 0
        self.num_docs = len(pairs)
        self._unit = seq_len if pack else 1  # what a row advances through the stream: pairs, or documents
        self._stream = self.total_pairs if pack else self.num_docs
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cache_bytes, self._lock = 0, threading.Lock()  # Grain may read rows from several threads

    def num_rows(self) -> int:
        """Rows that start within one ordered pass of the stream (the last one padded by `row`)."""
        return -(-self._stream // self._unit)

    def epoch_start(self, epoch: int) -> int:
        """First row of an epoch: rows that start within pass `epoch` of the stream belong to it."""
        return -(-epoch * self._stream // self._unit)

    def training_row(self, k: int, seed: int) -> int:
        """Which row of the stream the k-th training row is: epochs in order, each in its own random order."""
        epoch = k * self._unit // self._stream
        while self.epoch_start(epoch + 1) <= k:
            epoch += 1
        while self.epoch_start(epoch) > k:
            epoch -= 1
        first, stop = self.epoch_start(epoch), self.epoch_start(epoch + 1)
        return first + index_shuffle(k - first, max_index=stop - first - 1, seed=(seed + epoch) % 2**32, rounds=4)

    def shuffled(self, k: int, seed: int) -> dict:
        """The k-th row of training."""
        return self.row(self.training_row(k, seed), wrap=True)

    def documents_of(self, c: int) -> set[int]:
        """The documents row c (of the endless stream) holds pieces of, without reading them."""
        if not self.pack:
            return {c % self.num_docs}
        start, stop = c * self.seq_len, (c + 1) * self.seq_len
        first, last = (int(np.searchsorted(self._ends, (x % self.total_pairs), side="right")) for x in (start, stop - 1))
        wraps = (stop - 1) // self.total_pairs - start // self.total_pairs
        if wraps >= 2:
            return set(range(self.num_docs))
        return set(range(first, last + 1)) if wraps == 0 else set(range(first, self.num_docs)) | set(range(0, last + 1))

    def _tokens(self, doc: int) -> np.ndarray:
        with self._lock:
            if doc in self._cache:
                self._cache.move_to_end(doc)
                return self._cache[doc]
        tokens = np.asarray(self._docs[doc]["tokens"], dtype=np.int32)
        tokens.setflags(write=False)  # shared by every row that reads this document
        with self._lock:
            if doc not in self._cache:
                self._cache[doc], self._cache_bytes = tokens, self._cache_bytes + tokens.nbytes
                while self._cache_bytes > DOC_CACHE_BYTES and len(self._cache) > 1:
                    self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return tokens

    def row(self, c: int, wrap: bool = False) -> dict:
        """Row c of the stream; without wrap, a row past the end of one pass is padded instead."""
        L = self.seq_len
        inputs, targets, segments = np.zeros(L, np.int32), np.zeros(L, np.int32), np.zeros(L, np.int32)
        if not self.pack:
            tokens = self._tokens(c % self.num_docs)[: L + 1]
            n = len(tokens) - 1
            inputs[:n], targets[:n], segments[:n] = tokens[:-1], tokens[1:], 1
            return self._row(inputs, targets, segments)
        start = c * L
        stop = start + L if wrap else min(start + L, self.total_pairs)
        pos, segment = 0, 0
        while start + pos < stop:
            at = (start + pos) % self.total_pairs  # where in one pass of the stream
            doc = int(np.searchsorted(self._ends, at, side="right"))
            doc_start = int(self._ends[doc - 1]) if doc else 0
            lo = at - doc_start  # first pair of this document inside the row
            n = min(int(self._ends[doc]) - at, stop - start - pos)
            tokens = self._tokens(doc)
            segment += 1
            inputs[pos:pos + n], targets[pos:pos + n] = tokens[lo:lo + n], tokens[lo + 1:lo + n + 1]
            segments[pos:pos + n] = segment
            pos += n
        return self._row(inputs, targets, segments)

    def _row(self, inputs: np.ndarray, targets: np.ndarray, segments: np.ndarray) -> dict:
        return {"inputs": inputs, "targets": targets, "segment_ids": segments,
                "source_ids": np.full(self.seq_len, self.source_index, np.int32)}
