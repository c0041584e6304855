"""MinHash signatures and LSH banding for near-duplicate detection.

Word 5-gram shingles, 14 bands x 8 rows = 112 hashes (FineWeb's setting): a
pair with Jaccard similarity s becomes a candidate with probability
1 - (1 - s^8)^14 (0.57 at 0.7, 0.92 at 0.8). Hashes are stable across
processes and machines (CRC32 words, fixed-seed multiply-shift permutations),
so signatures computed on different workers agree. Vectorized with numpy:
the per-shingle work happens in C, not in a Python loop.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)
_CHUNK = 4096  # shingles per block, bounds memory on huge documents


class MinHasher:
    def __init__(self, num_perm: int = 112, ngram: int = 5, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.num_perm, self.ngram = num_perm, ngram
        self._a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
        self._b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self._pows = np.array([pow(0x100000001B3, k, 2**64) for k in range(ngram)], dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        """Distinct 64-bit hashes of the word n-grams (one shingle if the text is shorter)."""
        words = text.split()
        if not words:
            return np.zeros(1, dtype=np.uint64)
        h = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint64, count=len(words))
        n = min(self.ngram, len(h))
        out = np.zeros(len(h) - n + 1, dtype=np.uint64)
        for k in range(n):  # polynomial combination of n consecutive word hashes (wraps mod 2^64)
            out += h[k:len(h) - n + 1 + k] * self._pows[k]
        out ^= out >> np.uint64(29)
        out *= _MIX
        return np.unique(out)

    def signature(self, text: str) -> np.ndarray:
        """112 uint32 minima of multiply-shift hash permutations of the shingles."""
        s = self.shingles(text)
        sig = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(s), _CHUNK):
            block = s[start:start + _CHUNK, None] * self._a[None, :] + self._b[None, :]
            np.minimum(sig, (block >> np.uint64(32)).min(axis=0), out=sig)
        return sig.astype(np.uint32)


def band_keys(signature: np.ndarray, bands: int = 14, rows: int = 8) -> list[bytes]:
    """One bucket key per band: documents sharing any key are candidate duplicates."""
    if bands * rows > len(signature):
        raise ValueError(f"{bands} bands x {rows} rows needs {bands * rows} hashes; the signature has {len(signature)}")
    bands_BxR = signature[: bands * rows].reshape(bands, rows)
    return [bytes([b]) + hashlib.blake2b(bands_BxR[b].tobytes(), digest_size=12).digest() for b in range(bands)]


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


def jaccard(a: set | np.ndarray, b: set | np.ndarray) -> float:
    a, b = set(np.asarray(list(a)).tolist()), set(np.asarray(list(b)).tolist())
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
