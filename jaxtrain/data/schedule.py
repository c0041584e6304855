"""Which source each global row comes from: a Grain selection map with a mixture that may change by step.

Rows are numbered globally (step t holds rows t*B ... t*B + B - 1 of the global
batch B), and `MixtureSchedule[g]` says, in closed form, which source row g
comes from and which row of that source's stream it is. Within a stage the
sources are interleaved in exact proportion (the same integer interleave as
Grain's `MapDataset.mix`, which has no schedule); each source's row counter
carries on across stages, so no source row is read twice or skipped. Because
the map is a pure function of g, every process can build exactly the rows its
devices hold, and a run resumes from the next step alone, on any number of
processes (Levanter mixes with a similar piecewise schedule).
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Sequence

import grain

PROPORTION_SCALE = 10**6  # weights become integers out of a million (Grain scales to about 1%; finer here)


def integer_proportions(weights: Sequence[float]) -> list[int]:
    total = sum(weights)
    return [0 if w <= 0 else max(1, round(w / total * PROPORTION_SCALE)) for w in weights]


def interleave_counts(n: int, proportions: Sequence[int]) -> list[int]:
    """How many of the first n interleaved elements come from each source (exact proportions, Grain's rule)."""
    remaining, current, counts = sum(proportions), n, []
    for p in proportions:
        if p == 0:
            counts.append(0)
            continue
        nxt = current * (remaining - p) // remaining
        counts.append(current - nxt)
        remaining -= p
        current = nxt
    return counts


class MixtureSchedule(grain.transforms.DatasetSelectionMap):
    """Global row -> (source, row within that source), for stages of integer proportions starting at given rows."""

    def __init__(self, stages: Sequence[tuple[int, Sequence[float]]]):
        """stages: (first global row, per-source weights); the first starts at row 0; weights need not sum to 1."""
        if not stages or stages[0][0] != 0 or any(a[0] >= b[0] for a, b in zip(stages, stages[1:])):
            raise ValueError(f"stages must start at row 0 and increase, got {[s[0] for s in stages]}")
        self.starts = [int(s[0]) for s in stages]
        self.proportions = [integer_proportions(s[1]) for s in stages]
        # Rows each source has given out before each stage begins: its counter carries on.
        self.offsets = [[0] * len(self.proportions[0])]
        for k in range(1, len(stages)):
            spent = interleave_counts(self.starts[k] - self.starts[k - 1], self.proportions[k - 1])
            self.offsets.append([a + b for a, b in zip(self.offsets[-1], spent)])

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index: int) -> tuple[int, int]:
        k = bisect.bisect_right(self.starts, index) - 1
        j = index - self.starts[k]
        before, after = interleave_counts(j, self.proportions[k]), interleave_counts(j + 1, self.proportions[k])
        source = next(i for i, (a, b) in enumerate(zip(before, after)) if b != a)
        return source, self.offsets[k][source] + before[source]

    def rows_per_source(self, first: int, stop: int) -> list[int]:
        """Rows each source gives to global rows [first, stop) (for reports and tests)."""
        counts = [0] * len(self.proportions[0])
        for g in range(first, stop):
            counts[self[g][0]] += 1
        return counts


def document_probabilities(token_weights: Sequence[float], mean_doc_tokens: Sequence[float]) -> list[float]:
    """Row weights when each row is one (padded) document: dividing each token share by the source's mean
    document length makes the token mixture (what the weights mean) come out as configured."""
    p = [w / max(m, 1.0) for w, m in zip(token_weights, mean_doc_tokens)]
    return [x / sum(p) for x in p]


def row_stages(step_weights: Sequence[tuple[int, Sequence[float]]], batch_size: int) -> list[tuple[int, list[float]]]:
    """(step, weights) stages -> (first global row, weights): step s begins at row s * batch_size."""
    return [(step * batch_size, list(weights)) for step, weights in step_weights]
