"""Local multi-process launcher with restarts: N copies of a jaxtrain command on this machine.

For development and tests of multi-host behaviour on one box (CPU devices,
gloo collectives). Each process gets JAXTRAIN_COORDINATOR / _NUM_PROCESSES /
_PROCESS_ID; JAX's distributed runtime does the rest. If any process fails,
the others are stopped and the whole job is started again (it resumes from
the last checkpoint), up to `max_restarts` times. On TPU pods, the same role
is played by `tpu_scripts/` (relaunch on preemption) and the TPU runtime.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from jaxtrain.utils import log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_job(argv: list[str], num_processes: int, devices_per_process: int, heartbeat_timeout: int) -> int:
    """Run once; returns 0 when every process succeeded, else the first failing exit code."""
    port = _free_port()
    procs = []
    for pid in range(num_processes):
        env = dict(os.environ)
        env.update(
            JAXTRAIN_COORDINATOR=f"localhost:{port}",
            JAXTRAIN_NUM_PROCESSES=str(num_processes),
            JAXTRAIN_PROCESS_ID=str(pid),
            JAXTRAIN_HEARTBEAT_TIMEOUT_S=str(heartbeat_timeout),
            XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
        )
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxtrain.cli", *argv], env=env))
    failed = 0
    while any(p.poll() is None for p in procs):
        codes = [p.poll() for p in procs]
        bad = [c for c in codes if c not in (None, 0)]
        if bad:
            failed = bad[0]
            for p in procs:  # a dead peer dooms the others: stop them now rather than at the heartbeat timeout
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.time() + 60
            while any(p.poll() is None for p in procs) and time.time() < deadline:
                time.sleep(0.2)
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    codes = [p.wait() for p in procs]
    return failed or next((c for c in codes if c != 0), 0)


def launch(argv: list[str], num_processes: int, devices_per_process: int = 1, max_restarts: int = 3,
           heartbeat_timeout: int = 30) -> int:
    for attempt in range(max_restarts + 1):
        code = run_job(argv, num_processes, devices_per_process, heartbeat_timeout)
        if code == 0:
            return 0
        if attempt < max_restarts:
            log(f"[launch] a process exited with code {code}; restarting all {num_processes} "
                f"(attempt {attempt + 2} of {max_restarts + 1}); training resumes from the last checkpoint")
    log(f"[launch] giving up after {max_restarts} restarts (last exit code {code})")
    return code
