"""Local multi-process launcher with restarts: N copies of a jaxtrain command on this machine.

For development and tests of multi-host behaviour on one box (CPU devices,
gloo collectives). Each process gets JAXTRAIN_COORDINATOR / _NUM_PROCESSES /
_PROCESS_ID; JAX's distributed runtime does the rest. If any process fails,
the others are stopped and the whole job is started again (it resumes from
the last checkpoint), up to `max_restarts` times. On TPU pods, the same role
is played by `tpu_scripts/` (relaunch on preemption) and the TPU runtime.

The launcher owns its workers. SIGTERM, SIGINT or SIGHUP to it is passed to every worker as SIGTERM (the
preemption path: all save the same step and exit 75), the launcher exits with their code and does not
restart; a second signal kills them at once. Workers run in their own session, so a terminal's Ctrl-C
reaches the launcher alone (a worker interrupted by SIGINT would stop without saving), and are started
with PR_SET_PDEATHSIG (Linux): if the launcher itself is killed (SIGKILL), the kernel sends each worker
SIGTERM, and they save and exit rather than train on as orphans. Whatever is left of a worker's process
group when the job ends is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

from jaxtrain.utils import log

EXPECTED_FAILURE = 2  # what the CLI exits with on a one-line refusal or expected failure (jaxtrain.cli.main)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_GRACE_S = 300  # after a signal, workers get this long to save and exit before they are killed
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _die_with_parent(parent: int):
    """A preexec_fn: SIGTERM this worker when the launcher dies (Linux; elsewhere nothing)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return lambda: None

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the line above
            os._exit(1)

    return arm


class _Signals:
    """The launcher's handlers while a job runs: remember the signal, pass SIGTERM on to the workers."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.procs: list[subprocess.Popen] = []
        self._previous: dict = {}
        self._told: set[int] = set()

    def __enter__(self) -> "_Signals":
        for sig in FORWARDED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        del frame
        again, self.received = self.received is not None, signal.Signals(signum).name
        self.forward(signal.SIGKILL if again else signal.SIGTERM)

    def forward(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM once to each running worker (also to one started after the signal); SIGKILL to all."""
        for p in self.procs:
            if p.poll() is None and (sig == signal.SIGKILL or p.pid not in self._told):
                self._told.add(p.pid)
                p.send_signal(sig)


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128+N


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    deadline = time.time() + grace
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()


def run_job(argv: list[str], num_processes: int, devices_per_process: int, heartbeat_timeout: int,
            signals: _Signals | None = None) -> int:
    """Run once; returns 0 when every process succeeded, else the first failing exit code."""
    signals = signals or _Signals()
    port = _free_port()
    procs = signals.procs = []
    for pid in range(num_processes):
        env = dict(os.environ)
        env.update(
            JAXTRAIN_COORDINATOR=f"localhost:{port}",
            JAXTRAIN_NUM_PROCESSES=str(num_processes),
            JAXTRAIN_PROCESS_ID=str(pid),
            JAXTRAIN_HEARTBEAT_TIMEOUT_S=str(heartbeat_timeout),
            XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
        )
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxtrain.cli", *argv], env=env, start_new_session=True,
                                      preexec_fn=_die_with_parent(os.getpid())))
    failed = 0
    try:
        while any(p.poll() is None for p in procs):
            if signals.received:
                signals.forward()
                log(f"[launch] {signals.received}: passed to all {num_processes} processes as SIGTERM (they save "
                    f"and exit; a second signal kills them)")
                _stop(procs, STOP_GRACE_S)
                break
            bad = [c for c in (p.poll() for p in procs) if c not in (None, 0)]
            if bad:
                failed = bad[0]
                for p in procs:  # a dead peer dooms the others: stop them now rather than at the heartbeat timeout
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                _stop(procs, 60)
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            try:  # whatever a worker started (its session's process group) goes with it
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    codes = [_exit_code(p.returncode) for p in procs]
    return _exit_code(failed) or next((c for c in codes if c != 0), 0)


def launch(argv: list[str], num_processes: int, devices_per_process: int = 1, max_restarts: int = 3,
           heartbeat_timeout: int = 30) -> int:
    with _Signals() as signals:
        for attempt in range(max_restarts + 1):
            code = run_job(argv, num_processes, devices_per_process, heartbeat_timeout, signals)
            if signals.received:
                signals.forward()
                log(f"[launch] stopped by {signals.received}; the processes exited with code {code}; not restarting")
                return code
            if code == 0:
                return 0
            if code == EXPECTED_FAILURE:  # a refusal (busy run directory, bad config, disk full): the same again
                log(f"[launch] a process was refused or stopped on an expected failure (exit code {code}; its one "
                    "line is above); not restarting")
                return code
            if attempt < max_restarts:
                log(f"[launch] a process exited with code {code}; restarting all {num_processes} "
                    f"(attempt {attempt + 2} of {max_restarts + 1}); training resumes from the last checkpoint")
    log(f"[launch] giving up after {max_restarts} restarts (last exit code {code})")
    return code
