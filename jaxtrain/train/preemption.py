"""Preemption: turn a stop request into "save at a step boundary and exit 75".

One process: a Python SIGTERM/SIGINT handler notes the signal and the loop
saves after the current step. Several processes (a pod): no Python handler
at all. `jax.distributed.initialize()` installs JAX's preemption notifier,
which hears SIGTERM on any host and tells the coordination service; each step
every process asks Orbax's `reached_preemption(step)` (JAX's preemption sync
point), which turns true on every process at the same step, so all save the
same step and exit together. A Python handler would replace that notifier:
the host that got the signal would stop alone and the others would hang in a
collective.
"""

from __future__ import annotations

import signal
import types

import jax

from jaxtrain.errors import JaxtrainError

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again", what a relauncher looks for


class Preempted(JaxtrainError):
    """Raised after the preemption checkpoint has been committed."""

    def __init__(self, step: int):
        super().__init__(f"preempted at step {step}: checkpoint saved; rerun the same command to resume")
        self.step = step


class PreemptionWatcher:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self.multi_process = jax.process_count() > 1

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        del frame
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionWatcher":
        if self.multi_process:
            return self  # JAX's notifier owns SIGTERM (see the module docstring)
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
        """Ask once per step, on every process."""
        if self.multi_process:
            return bool(manager.reached_preemption(step))
        return self.signal_name is not None
