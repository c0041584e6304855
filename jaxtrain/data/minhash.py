"""MinHash signatures and LSH banding for near-duplicate detection.

Word 5-gram shingles, 14 bands x 8 rows = 112 hashes (FineWeb's setting): a
pair with Jaccard similarity s becomes a candidate with probability
1 - (1 - s^8)^14 (0.57 at 0.7, 0.92 at 0.8). Hashes are stable across
processes and machines (polynomial byte hashes, fixed seeds), so signatures
computed on different workers agree. Vectorized with numpy over batches of
documents: no Python loop per word or shingle.
"""

from __future__ import annotations

import hashlib

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)


_P = 0x100000001B3  # FNV prime: odd, so invertible mod 2^64
_P_INV = pow(_P, -1, 2**64)
_SPACE = np.zeros(256, dtype=bool)
_SPACE[[9, 10, 11, 12, 13, 32]] = True  # ASCII whitespace, as bytes.split() splits


class MinHasher:
    """Word n-gram MinHash signatures. method="oph" (default): one permutation hashing with
    densification; "kperm": k independent permutations (the textbook form, 112x the hashing work)."""

    def __init__(self, num_perm: int = 112, ngram: int = 5, seed: int = 1, method: str = "oph"):
        if method not in ("oph", "kperm"):
            raise ValueError(f"method {method!r}: choose 'oph' or 'kperm'")
        rng = np.random.default_rng(seed)
        self.num_perm, self.ngram, self.method = num_perm, ngram, method
        self._probe = rng.integers(0, num_perm, size=(4096, num_perm))  # densification probe sequences
        self._a = rng.integers(1, 2**32, size=num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
        self._b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint64).astype(np.uint32)
        self._pows = np.array([pow(0x9E3779B1, k, 2**64) for k in range(ngram)], dtype=np.uint64)
        self._pw = self._inv = np.zeros(0, dtype=np.uint64)  # powers of P, grown by _powers

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """P^(i+1) and P^-i for i < n (wrapping mod 2^64), cached and grown on demand."""
        if self._pw.size < n:
            size = max(n, 2 * self._pw.size, 1 << 16)
            with np.errstate(over="ignore"):
                self._pw = np.cumprod(np.full(size, _P, dtype=np.uint64))
                inv = np.cumprod(np.full(size, _P_INV, dtype=np.uint64))
            self._inv = np.concatenate((np.ones(1, np.uint64), inv))
        return self._pw[:n], self._inv[: n + 1]

    def word_hashes(self, data: bytes) -> np.ndarray:
        """64-bit polynomial hash of every whitespace-separated word, from prefix sums (no Python loop)."""
        b = np.frombuffer(data, dtype=np.uint8)
        if b.size == 0:
            return np.zeros(0, dtype=np.uint64)
        space = _SPACE[b]
        edge = np.diff(np.concatenate(([True], space, [True])).astype(np.int8))
        starts, ends = np.flatnonzero(edge == -1), np.flatnonzero(edge == 1)
        if starts.size == 0:
            return np.zeros(0, dtype=np.uint64)
        pw, inv = self._powers(b.size)
        with np.errstate(over="ignore"):
            prefix = np.concatenate((np.zeros(1, np.uint64), np.cumsum((b.astype(np.uint64) + np.uint64(1)) * pw)))
            return (prefix[ends] - prefix[starts]) * inv[starts] + (ends - starts).astype(np.uint64)

    def _shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """64-bit hashes of every document's word n-grams (a document shorter than n words is one
        shingle), concatenated; and each document's first shingle index."""
        data = b"\n".join(t.encode("utf-8") for t in texts)
        doc_starts = np.cumsum([0] + [len(t.encode("utf-8")) + 1 for t in texts[:-1]])
        h = self.word_hashes(data)
        if h.size == 0:
            return np.zeros(len(texts), np.uint64), np.arange(len(texts))
        b = np.frombuffer(data, dtype=np.uint8)
        edge = np.diff(np.concatenate(([True], _SPACE[b])).astype(np.int8))
        word_byte = np.flatnonzero(edge == -1)
        first_word = np.searchsorted(word_byte, doc_starts)  # per doc, index of its first word
        n_words = np.diff(np.append(first_word, h.size))
        n_shingles = np.maximum(n_words - self.ngram + 1, 1)
        offsets = np.concatenate(([0], np.cumsum(n_shingles)[:-1]))
        doc_of = np.repeat(np.arange(len(texts)), n_shingles)
        start = first_word[doc_of] + (np.arange(n_shingles.sum()) - offsets[doc_of])
        length = np.minimum(n_words[doc_of], self.ngram)
        out = np.zeros(start.size, dtype=np.uint64)
        last = h.size - 1
        with np.errstate(over="ignore"):
            for k in range(self.ngram):  # polynomial combination of n consecutive word hashes
                out += np.where(k < length, h[np.minimum(start + k, last)] * self._pows[k], np.uint64(0))
            out ^= out >> np.uint64(31)
            out *= _MIX
            out ^= out >> np.uint64(29)
        return out, offsets

    def shingles(self, text: str) -> np.ndarray:
        return self._shingles([text])[0]

    def signatures(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """[len(texts), num_perm] uint32 signatures, hashed in batches so numpy's per-call cost is shared."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        for i in range(0, len(texts), batch):
            h, offsets = self._shingles(texts[i:i + batch])
            sign = self._one_permutation if self.method == "oph" else self._k_permutations
            out[i:i + batch] = sign(h, offsets)
        return out

    def _k_permutations(self, h: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Classic MinHash: the minimum of each of k (a*x + b) mod 2^32 permutations (a odd)."""
        s = (h >> np.uint64(32)).astype(np.uint32)
        block_PxS = self._a[:, None] * s[None, :]  # permutations x shingles: rows stay contiguous
        block_PxS += self._b[:, None]
        return np.minimum.reduceat(block_PxS, offsets, axis=1).T

    def _one_permutation(self, h: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """One permutation hashing (Li, Owen, Zhang 2012): one hash per shingle, split into k bins by
        its middle bits, minimum of the high bits per bin; empty bins take the value of the first
        non-empty bin on a fixed pseudo-random probe sequence (optimal densification, Shrivastava
        2017), so collisions stay an unbiased Jaccard estimate. O(shingles) instead of O(k x shingles)."""
        k, n_docs = self.num_perm, len(offsets)
        doc_of = np.repeat(np.arange(n_docs), np.diff(np.append(offsets, h.size)))
        cell = doc_of * k + ((((h >> np.uint64(16)) & np.uint64(0xFFFF)) * np.uint64(k)) >> np.uint64(16)).astype(np.int64)
        sig = np.full(n_docs * k, np.iinfo(np.uint32).max, dtype=np.uint32)
        np.minimum.at(sig, cell, (h >> np.uint64(32)).astype(np.uint32))
        filled = np.zeros(n_docs * k, dtype=bool)
        filled[cell] = True
        sig, filled = sig.reshape(n_docs, k), filled.reshape(n_docs, k)
        rows, cols = np.nonzero(~filled)
        source = sig.copy()
        for attempt in range(len(self._probe)):
            if rows.size == 0:
                break
            cand = self._probe[attempt, cols]
            hit = filled[rows, cand]
            sig[rows[hit], cols[hit]] = source[rows[hit], cand[hit]]
            rows, cols = rows[~hit], cols[~hit]
        return sig

    def signature(self, text: str) -> np.ndarray:
        return self.signatures([text])[0]


def band_keys(signature: np.ndarray, bands: int = 14, rows: int = 8) -> list[bytes]:
    """One bucket key per band: documents sharing any key are candidate duplicates."""
    if bands * rows > len(signature):
        raise ValueError(f"{bands} bands x {rows} rows needs {bands * rows} hashes; the signature has {len(signature)}")
    bands_BxR = signature[: bands * rows].reshape(bands, rows)
    return [bytes([b]) + hashlib.blake2b(bands_BxR[b].tobytes(), digest_size=12).digest() for b in range(bands)]


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash arrays."""
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / max(len(a | b), 1)


def cluster(keys_by_doc: dict[str, list[bytes]]) -> dict[str, str]:
    """Connected components over shared band keys; each document maps to its component's
    smallest id (deterministic: the same input always keeps the same representative)."""
    parent: dict[str, str] = {d: d for d in keys_by_doc}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_in_bucket: dict[bytes, str] = {}
    for doc in sorted(keys_by_doc):
        for key in keys_by_doc[doc]:
            other = first_in_bucket.setdefault(key, doc)
            if other != doc:
                ra, rb = find(doc), find(other)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    return {d: find(d) for d in keys_by_doc}
