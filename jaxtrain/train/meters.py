"""Small accounting objects for the training loop: throughput/MFU and the realized data mixture."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxtrain.data.loader import realized_mixture
from jaxtrain.scaling import flops


class Throughput:
    """Tokens/s, tokens/s per chip, step time and MFU over the steps since the last `restart()`.

    The loop restarts the window after compilation, after each measurement and
    after an eval, so evaluation time never counts as training time. Call
    `measure()` only once the window's last step is on the host (its metrics
    fetched): only then is the elapsed time real compute time.
    """

    def __init__(self, tokens_per_step: int, n_chips: int, flops_per_token: float, peak: float | None,
                 clock: Callable[[], float] = time.perf_counter):
        self.tokens_per_step, self.n_chips = tokens_per_step, n_chips
        self.flops_per_token, self.peak = flops_per_token, peak
        self.clock = clock
        self.restart()

    def restart(self) -> None:
        self.start, self.steps = self.clock(), 0

    def step(self) -> None:
        self.steps += 1

    def measure(self) -> dict:
        """The window's figures; starts a new window."""
        step_time = (self.clock() - self.start) / max(self.steps, 1)
        tok_s = self.tokens_per_step / step_time if step_time > 0 else 0.0
        self.restart()
        return {"step_time_s": step_time, "tokens_per_s": tok_s, "tokens_per_s_per_chip": tok_s / self.n_chips,
                "mfu": flops.mfu(self.flops_per_token, tok_s, self.n_chips, self.peak)}


class MixtureMeter:
    """Target tokens per source, per log window (for metrics.jsonl) and since the last report (for the log)."""

    def __init__(self, sources: Sequence[str], trained: dict[str, int] | None = None):
        """trained: target tokens per source of every step before this one (a checkpoint's `tokens_by_source`),
        held by process 0 (each process counts the rows it draws; `trained()` adds them up)."""
        self.sources = list(sources)
        self.window = np.zeros(len(self.sources), np.int64)
        self.since_report = np.zeros(len(self.sources), np.int64)
        earlier = [int((trained or {}).get(s, 0)) for s in self.sources] if jax.process_index() == 0 else 0
        self.total = np.zeros(len(self.sources), np.int64) + earlier

    def add(self, batch: dict) -> None:
        tokens = realized_mixture(batch, len(self.sources))
        self.window += tokens
        self.since_report += tokens
        self.total += tokens

    def trained(self) -> dict[str, int]:
        """Target tokens per source of every step so far, all processes together (a collective on a pod)."""
        total = self.total
        if jax.process_count() > 1:
            total = np.asarray(multihost_utils.process_allgather(total)).sum(axis=0)
        return {s: int(n) for s, n in zip(self.sources, total)}

    def window_shares(self) -> dict[str, float]:
        """`mix/<source>` shares of the tokens since the last call; the window then starts again."""
        shares = {f"mix/{s}": float(n / max(self.window.sum(), 1)) for s, n in zip(self.sources, self.window)}
        self.window[:] = 0
        return shares

    def report(self, target: Sequence[float]) -> str:
        """Realized against configured shares since the last report; the count then starts again."""
        share = self.since_report / max(self.since_report.sum(), 1)
        self.since_report[:] = 0
        return ", ".join(f"{s} {x:.1%} (configured {w:.1%})" for s, x, w in zip(self.sources, share, target))
