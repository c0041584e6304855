"""A mixture whose weights change with the training step (Levanter-style piecewise schedule).

Grain's `IterDataset.mix` has fixed proportions, so this is a small Grain
IterDataset of our own: stages of document-draw probabilities, each starting
at a number of draws; within a stage the source is chosen by deterministic
weighted round robin (no randomness, like Grain's mix), and the iterator state
(draws so far, per-stage counts, every source's own state) is JSON, so it goes
into checkpoints and resumes exactly. Step boundaries are converted to draw
counts with the sources' mean document lengths, so a switch lands within a
batch or two of its step.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain


class ScheduledMixIterDataset(grain.IterDataset):
    def __init__(self, parents: Sequence[grain.IterDataset], stages: Sequence[tuple[int, Sequence[float]]]):
        """stages: (first draw, per-source probabilities), the first starting at draw 0."""
        super().__init__(list(parents))
        if not stages or stages[0][0] != 0 or any(a[0] >= b[0] for a, b in zip(stages, stages[1:])):
            raise ValueError(f"stages must start at draw 0 and increase, got {[s[0] for s in stages]}")
        self._stages = [(int(start), [p / sum(probs) for p in probs]) for start, probs in stages]

    def __iter__(self) -> grain.DatasetIterator:
        return _ScheduledMixIterator([p.__iter__() for p in self._parents], self._stages)

    def __str__(self) -> str:
        return f"ScheduledMixIterDataset({len(self._parents)} parents, {len(self._stages)} stages)"


class _ScheduledMixIterator(grain.DatasetIterator):
    def __init__(self, parents: list[grain.DatasetIterator], stages: list[tuple[int, list[float]]]):
        super().__init__(parents)
        self._stages = stages
        self._draws = 0
        self._counts = [0] * len(parents)  # draws per source within the current stage

    def _stage(self) -> tuple[int, list[float]]:
        return [s for s in self._stages if s[0] <= self._draws][-1]

    def __next__(self):
        start, probs = self._stage()
        if self._draws == start:
            self._counts = [0] * len(self._parents)
        n = self._draws - start + 1
        source = max(range(len(probs)), key=lambda i: (n * probs[i] - self._counts[i], -i))
        self._counts[source] += 1
        self._draws += 1
        return next(self._parents[source])

    def get_state(self) -> dict:
        return {"draws": self._draws, "counts": list(self._counts), "parents": [p.get_state() for p in self._parents]}

    def set_state(self, state: dict) -> None:
        for parent, parent_state in zip(self._parents, state["parents"]):
            parent.set_state(parent_state)
        self._draws, self._counts = state["draws"], list(state["counts"])


def document_probabilities(token_weights: Sequence[float], mean_doc_tokens: Sequence[float]) -> list[float]:
    """Grain mixes by drawing documents; dividing each token share by the source's mean document
    length makes the token mixture (what the weights mean) come out as configured."""
    p = [w / max(m, 1.0) for w, m in zip(token_weights, mean_doc_tokens)]
    return [x / sum(p) for x in p]


def draw_boundaries(step_weights: Sequence[tuple[int, Sequence[float]]], mean_doc_tokens: Sequence[float],
                    tokens_per_step: int) -> list[tuple[int, list[float]]]:
    """(step, token weights) stages -> (draw, document probabilities) stages.

    Token weights become document probabilities by dividing by the mean document
    length; the draws a stage spans are its tokens over the expected tokens per draw."""
    stages, draws = [], 0.0
    for k, (step, weights) in enumerate(step_weights):
        probs = document_probabilities(weights, mean_doc_tokens)
        stages.append((round(draws), probs))
        if k + 1 < len(step_weights):
            tokens_per_draw = sum(p * m for p, m in zip(probs, mean_doc_tokens))
            draws += (step_weights[k + 1][0] - step) * tokens_per_step / max(tokens_per_draw, 1.0)
    return stages
