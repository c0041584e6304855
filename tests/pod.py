"""A simulated pod: the real `jaxtrain` CLI as N processes x M CPU devices over gloo (jax.distributed).

`JAXTRAIN_CPU_DEVICE_ORDER=interleaved` lays the devices out round-robin over processes, so the innermost
mesh axes (tensor, then fsdp) span processes the way create_device_mesh splits a TPU pod's axes over hosts;
the default process-major order makes the outer axes (data, fsdp) span them.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import portpicker


def launch(run_dir: pathlib.Path, processes: int, devices: int, *args: str, order: str = "process",
           command: str = "train", heartbeat: int = 20, env: dict | None = None) -> list[subprocess.Popen]:
    """Start the pod: `jaxtrain COMMAND --run-dir RUN ARGS` in every process."""
    port = portpicker.pick_unused_port()
    procs = []
    for pid in range(processes):
        proc_env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                        JAXTRAIN_CPU_DEVICE_ORDER=order, **(env or {}))
        cmd = [sys.executable, "-m", "jaxtrain.cli", command, "--run-dir", str(run_dir),
               "--coordinator", f"localhost:{port}", "--num-processes", str(processes), "--process-id", str(pid),
               "--heartbeat-timeout", str(heartbeat), *args]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=proc_env))
    return procs


def wait(procs: list[subprocess.Popen], timeout: float = 600) -> tuple[list[int], list[str]]:
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], outs


def run(run_dir: pathlib.Path, processes: int, devices: int, *args: str, order: str = "process",
        timeout: float = 600) -> list[str]:
    """Launch, wait, and require every process to exit 0; returns the outputs."""
    codes, outs = wait(launch(run_dir, processes, devices, *args, order=order), timeout)
    assert codes == [0] * processes, "\n\n".join(o[-3000:] for o in outs)
    return outs


def train_log(run_dir: pathlib.Path) -> dict[int, dict]:
    """metrics.jsonl's training lines by step (the last one written for a step wins)."""
    rows = [json.loads(x) for x in (pathlib.Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}
