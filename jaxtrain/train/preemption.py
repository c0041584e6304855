"""Preemption: turn SIGTERM / SIGINT into "save at the next step boundary and exit".

On multi-host TPU, Orbax's `reached_preemption` (JAX's preemption sync point)
makes every host agree on the same step, so all of them save it.
"""

from __future__ import annotations

import signal
import types

import jax

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again", what a relauncher looks for


class Preempted(Exception):
    """Raised after the preemption checkpoint has been committed."""

    def __init__(self, step: int):
        super().__init__(f"preempted at step {step}: checkpoint saved; rerun the same command to resume")
        self.step = step


class PreemptionWatcher:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        del frame
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionWatcher":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def should_stop(self, step: int, manager) -> bool:
        if self.signal_name is not None:
            return True
        if jax.process_count() > 1:
            return bool(manager.reached_preemption(step))
        return False
