"""Multi-process start-up: JAX's own distributed runtime, nothing home-made.

On Cloud TPU VMs `jax.distributed.initialize()` needs no arguments (every host
discovers the slice). Elsewhere (several processes on one machine, CPU tests)
pass the coordinator address, process count and id, or set JAXTRAIN_COORDINATOR,
JAXTRAIN_NUM_PROCESSES and JAXTRAIN_PROCESS_ID. CPU collectives go over gloo.
If a peer dies, the runtime's heartbeat notices within `heartbeat_timeout_s`
and the survivors exit with an error instead of hanging in a collective.
"""

from __future__ import annotations

import os

import jax

# How long every process waits for all the others to join: pods start their hosts over minutes
# (JAX's and MaxText's default is 300 s; a 100 s wait failed big slices that were merely slow).
STARTUP_TIMEOUT_S = 300


def initialize_from_env(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout_s: int = 100,
    auto: bool = False,
) -> bool:
    """Start jax.distributed if asked to; True when running multi-process."""
    coordinator = coordinator or os.environ.get("JAXTRAIN_COORDINATOR")
    if num_processes is None and "JAXTRAIN_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAXTRAIN_NUM_PROCESSES"])
    if process_id is None and "JAXTRAIN_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAXTRAIN_PROCESS_ID"])
    timeout = int(os.environ.get("JAXTRAIN_HEARTBEAT_TIMEOUT_S", heartbeat_timeout_s))
    if coordinator is None and not auto:
        return False
    if coordinator is not None and (num_processes is None or process_id is None):
        raise ValueError("--coordinator needs --num-processes and --process-id (or JAXTRAIN_NUM_PROCESSES / _PROCESS_ID)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=timeout,
        initialization_timeout=int(os.environ.get("JAXTRAIN_STARTUP_TIMEOUT_S", STARTUP_TIMEOUT_S)),
        shutdown_timeout_seconds=timeout,
    )
    return jax.process_count() > 1
