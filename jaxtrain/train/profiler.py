"""A jax.profiler trace of a few training steps, switched on by `log.profile_steps`.

The trace covers steps profile_skip_steps + 1 .. profile_skip_steps + profile_steps of this invocation
(compilation and warm-up stay out) and is written under RUN_DIR/tensorboard/plugins/profile/<time>/:
`*.xplane.pb` for TensorBoard's Profile tab (`tensorboard --logdir RUN_DIR/tensorboard`, with the
tensorboard-plugin-profile package) and `*.trace.json.gz` for https://ui.perfetto.dev. Every process
traces its own host.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxtrain.config import LogConfig
from jaxtrain.rundir import RunDir
from jaxtrain.utils import log


class StepProfiler:
    def __init__(self, log_cfg: LogConfig, run: RunDir):
        self.run = RunDir(run)
        self.start = log_cfg.profile_skip_steps
        self.stop = log_cfg.profile_skip_steps + log_cfg.profile_steps if log_cfg.profile_steps > 0 else None
        self.steps_done = 0
        self.active = False

    def after_step(self, state: Any) -> None:
        """Called once after every training step has been dispatched."""
        if self.stop is None:
            return
        self.steps_done += 1
        if self.steps_done == self.start:
            jax.block_until_ready(state)  # the steps before stay out of the trace
            jax.profiler.start_trace(str(self.run.tensorboard), create_perfetto_trace=True)
            self.active = True
        elif self.active and self.steps_done == self.stop:
            self.close(state)

    def close(self, state: Any = None) -> None:
        """Stop a running trace (at its last step, or when training ends first)."""
        if not self.active:
            return
        jax.block_until_ready(state)  # the traced steps' device work belongs in the trace
        jax.profiler.stop_trace()
        self.active = False
        log(f"[profile] trace of {self.stop - self.start} step(s) written under "
            f"{self.run.tensorboard}/plugins/profile (TensorBoard Profile tab; *.trace.json.gz for Perfetto)")
