"""Console logging and a dependency-free progress line."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def log(message: str) -> None:
    """Print on process 0 only (every host runs the same program)."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.process_index() != 0:
        return
    print(message, flush=True)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """A single updating line on a terminal; periodic lines when output is a file."""

    def __init__(self, label: str, unit: str = "items", total: int | None = None, every_s: float = 2.0):
        self.label, self.unit, self.total, self.every_s = label, unit, total, every_s
        self.count = 0
        self.start = self.last = time.perf_counter()
        self.tty = sys.stdout.isatty()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self.last >= (0.2 if self.tty else self.every_s):
            self.last = now
            rate = self.count / max(now - self.start, 1e-9)
            of = f"/{self.total}" if self.total else ""
            text = f"{self.label}: {self.count}{of} {self.unit} ({rate:,.0f}/s)"
            print(("\r" + text) if self.tty else text, end="" if self.tty else "\n", flush=True)

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        for item in items:
            yield item
            self.update()

    def close(self, summary: str = "") -> None:
        elapsed = time.perf_counter() - self.start
        end = "\r" if self.tty else ""
        print(f"{end}{self.label}: {summary} [{elapsed:.1f}s]".ljust(80), flush=True)
