"""Two processes on this machine: jax.distributed over localhost with gloo CPU collectives."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import portpicker
import pytest


def _launch(run_dir: pathlib.Path, steps: int, port: int, extra=()) -> list[subprocess.Popen]:
    procs = []
    for pid in range(2):
        env = dict(os.environ)
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        cmd = [
            sys.executable, "-m", "jaxtrain.cli", "train", "--config", "tiny", "--run-dir", str(run_dir),
            "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(pid),
            "--heartbeat-timeout", "10", f"train.steps={steps}", "checkpoint.every_steps=2",
            "eval.every_steps=4", "train.log_every=1", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", *extra,
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    return procs


def _wait(procs, timeout=300):
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], outs


@pytest.fixture
def mp_run(prepared_run, tmp_path):
    run = tmp_path / "mp"
    shutil.copytree(prepared_run, run, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
    return run


@pytest.mark.slow  # tests/test_pod.py and test_pod_resume.py train, save and restore on 2 and 4 processes
def test_two_processes_train_save_and_restore(mp_run):
    codes, outs = _wait(_launch(mp_run, steps=4, port=portpicker.pick_unused_port()))
    assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "on 8 cpu devices" in outs[0] and "step      4/4" in outs[0]
    saved = {p.name for p in (mp_run / "checkpoints" / "4" / "data").iterdir()}
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= saved  # each process's data position
    codes, outs = _wait(_launch(mp_run, steps=6, port=portpicker.pick_unused_port()))
    assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "resuming from checkpoint step 4" in outs[0] and "step      6/6" in outs[0]


def test_a_dead_peer_makes_the_other_exit_with_an_error(mp_run):
    procs = _launch(mp_run, steps=100000, port=portpicker.pick_unused_port(), extra=["checkpoint.every_steps=1000"])
    deadline = time.time() + 240
    while not (mp_run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    procs[1].send_signal(signal.SIGKILL)
    start = time.time()
    try:
        out = procs[0].communicate(timeout=120)[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    waited = time.time() - start
    assert procs[0].returncode != 0, out[-2000:]
    assert waited < 90, f"survivor took {waited:.0f}s to exit"


@pytest.mark.slow  # 70 s; the default suite's launcher runs are tests/test_pod*.py
def test_launcher_restarts_the_job_after_a_crash_and_it_resumes(mp_run):
    import psutil

    cmd = [
        sys.executable, "-m", "jaxtrain.cli", "launch", "--num-processes", "2", "--devices-per-process", "4",
        "--max-restarts", "2", "--heartbeat-timeout", "10", "--",
        "train", "--config", "tiny", "--run-dir", str(mp_run), "train.steps=40", "checkpoint.every_steps=2",
        "eval.every_steps=1000", "train.log_every=1", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2",
    ]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (mp_run / "checkpoints" / "4").exists() and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.2)
    victims = [c for c in psutil.Process(launcher.pid).children() if "--num-processes" not in " ".join(c.cmdline())]
    assert victims, "no worker processes found"
    victims[-1].kill()  # a worker "crashes"
    out = launcher.communicate(timeout=600)[0]
    assert launcher.returncode == 0, out[-3000:]
    assert "restarting all 2" in out and "resuming from checkpoint step" in out and "step     40/40" in out


def test_sigterm_to_the_launcher_reaches_every_worker_and_leaves_no_process(mp_run):
    import psutil

    cmd = [
        sys.executable, "-m", "jaxtrain.cli", "launch", "--num-processes", "2", "--devices-per-process", "1",
        "--max-restarts", "2", "--heartbeat-timeout", "10", "--",
        "train", "--config", "tiny", "--run-dir", str(mp_run), "train.steps=100000", "checkpoint.every_steps=1000",
        "eval.every_steps=1000", "train.log_every=1",  # one device per process: the cheapest pod to compile
    ]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not (mp_run / "metrics.jsonl").exists() and time.time() < deadline and launcher.poll() is None:
            time.sleep(0.2)
        workers = psutil.Process(launcher.pid).children(recursive=True)
        assert len(workers) >= 2, "no worker processes found"
        launcher.send_signal(signal.SIGTERM)  # what a scheduler or `kill` does to the job
        start = time.time()
        out = launcher.communicate(timeout=120)[0]
        waited = time.time() - start
    finally:
        if launcher.poll() is None:
            launcher.kill()
    alive = [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"workers left running: {alive}\n{out[-3000:]}"
    assert launcher.returncode == 75, out[-3000:]  # the workers' preemption code, passed on
    assert waited < 90 and "not restarting" in out and "restarting all" not in out, out[-3000:]
    saved = int(out.split("checkpoint of step ")[1].split()[0])
    assert (mp_run / "checkpoints" / str(saved)).exists()
    assert (mp_run / "writer.lock").read_text() == ""  # process 0 released the run directory on its way out


def test_the_launcher_does_not_restart_a_refused_job(monkeypatch):
    """A new user's trial: a second launch on a busy run directory was refused (exit 2) and then restarted twice;
    a refusal or expected failure ends the launch at once with its code."""
    from jaxtrain.parallel import launch as launch_lib

    codes = iter([2, 0])
    calls = []
    monkeypatch.setattr(launch_lib, "run_job", lambda *a, **k: calls.append(a) or next(codes))
    assert launch_lib.launch(["train"], 2, max_restarts=3) == 2 and len(calls) == 1
    codes = iter([1, 0])
    assert launch_lib.launch(["train"], 2, max_restarts=3) == 0  # a crash is still restarted
