"""One writer per run directory (jaxtrain/runlock.py), and readers beside a live trainer never harm it.

The lock's rules on a local disk and on gs:// (the offline fake bucket of test_gs_paths.py) cost
milliseconds; one trainer subprocess saving every step then serves the two claims that need a live
writer: `jaxtrain eval`, `sample` and `export` read it in a loop and every checkpoint stays whole, and a
second `jaxtrain train` on its run directory is refused in one line naming it.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from jaxtrain import cli, runlock
from jaxtrain.config import load_run_config
from jaxtrain.rundir import RunDir
from jaxtrain.train.checkpoint import Checkpointer
from jaxtrain.train.trainer import build_session

from test_gs_paths import fake_gcs  # noqa: F401 (the fixture)

HOLD = ("import sys, time; from jaxtrain import runlock\n"
        "with runlock.writer(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)")


def _holder_process(run) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _holder_process(run)
    try:
        with pytest.raises(runlock.RunDirBusy) as refused:
            with runlock.writer(run):
                pass
        line = str(refused.value)
        assert "\n" not in line and f"pid {holder.pid}" in line and socket.gethostname() in line, line
        assert "-c" in line and "since 20" in line and "another --run-dir" in line, line
        holder.send_signal(signal.SIGKILL)  # no clean-up: the OS drops the lock, the record stays
        holder.wait()
    finally:
        holder.kill()
    with runlock.writer(run):
        out = capsys.readouterr().out
        assert f"taking over from" in out and f"pid {holder.pid}" in out, out
        with runlock.writer(run):  # re-entrant: `run` holds it around `train` around `prepare`
            pass
        assert json.loads(RunDir(run).writer_lock.read_text())["pid"] == os.getpid()
    assert RunDir(run).writer_lock.read_text() == ""  # released: nothing to take over next time
    with pytest.raises(RuntimeError, match="a failing writer"):
        with runlock.writer(run):
            assert "taking over" not in capsys.readouterr().out
            raise RuntimeError("a failing writer")
    assert RunDir(run).writer_lock.read_text() == ""  # released on error too
    with runlock.writer(run):
        assert "taking over" not in capsys.readouterr().out


def test_only_the_primary_process_of_a_pod_takes_it(tmp_path):
    run = tmp_path / "run"
    holder = _holder_process(run)
    try:
        with runlock.writer(run, primary=False):  # process 1 of the holder's pod
            pass
    finally:
        holder.kill()
        holder.wait()


def test_gs_lease_fresh_refuses_stale_is_taken_over_heartbeat_renews(fake_gcs, monkeypatch, capsys):  # noqa: F811
    run = RunDir("gs://bucket/runs/leased")
    lease = fake_gcs / "bucket/runs/leased/writer.lock"
    lease.parent.mkdir(parents=True)
    other = {"host": "tpu-vm-7", "pid": 4242, "command": "jaxtrain train --config llama-1b", "started": time.time() - 600,
             "token": "theirs"}
    lease.write_text(json.dumps({**other, "heartbeat": time.time() - 5}))
    with pytest.raises(runlock.RunDirBusy, match=r"tpu-vm-7, pid 4242.*renewed \d+s ago \(taken over when 60s old\)"):
        with runlock.writer(run):
            pass
    lease.write_text(json.dumps({**other, "heartbeat": time.time() - 61}))
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    with runlock.writer(run):
        assert re.search(r"taking over from .*tpu-vm-7, pid 4242.*last renewed 6\ds ago", capsys.readouterr().out)
        first = json.loads(lease.read_text())
        assert first["pid"] == os.getpid() and first["host"] == socket.gethostname()
        time.sleep(0.5)
        assert json.loads(lease.read_text())["heartbeat"] > first["heartbeat"]  # the daemon thread renews it
    assert not lease.exists()  # released


STEPS = 24
TRAIN = ["train.steps=%d" % STEPS, "checkpoint.every_steps=1", "checkpoint.keep=3", "checkpoint.async_save=true",
         "eval.every_steps=1000", "eval.tasks=false", "train.log_every=1"]


def test_readers_beside_a_trainer_saving_every_step_and_a_second_trainer_refused(prepared_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "live"
    shutil.copytree(prepared_run, run, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl", "writer.lock"))
    trainer = subprocess.Popen([sys.executable, "-m", "jaxtrain.cli", "train", "--config", "tiny", "--run-dir", str(run),
                                *TRAIN], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lock = run / "writer.lock"
        deadline = time.time() + 240
        while not (lock.exists() and lock.read_text()) and trainer.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        capsys.readouterr()
        # the second writer, while the first compiles (seconds, on any machine): refused in one line, nothing written
        assert cli.main(["train", "--run-dir", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"pid {trainer.pid}" in err and "jaxtrain train --config tiny" in err, err
        assert not (run / "logs").exists()
        while not (run / "checkpoints" / "1").exists() and trainer.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        reads = {"eval": 0, "sample": 0, "export": 0}
        while trainer.poll() is None or not all(reads.values()):
            for command, extra in (("eval", []), ("sample", ["--prompt", "def ", "--tokens", "2"]),
                                   ("export", ["--out", str(tmp_path / "hf")])):
                assert cli.main([command, "--run-dir", str(run), *extra]) == 0, capsys.readouterr().err
                reads[command] += 1
        out = trainer.communicate(timeout=300)[0]
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 0, out[-3000:]
    assert (run / "writer.lock").read_text() == "" and "taking over" not in out  # released at its end
    assert f"step {STEPS:>6}/{STEPS}" in out
    assert not (run / "checkpoints.corrupt").exists() and "set aside" not in out and "corrupt" not in out
    # Every retained checkpoint is whole: the latest `keep` steps, each restoring in full
    cfg = load_run_config(run)
    session = build_session(cfg, run)
    checkpointer = session.checkpointer(read_only=True)
    try:
        steps = checkpointer.all_steps()
        assert steps == list(range(STEPS - 2, STEPS + 1)), steps
        for step in steps:
            params = checkpointer.restore_params(step, session.abstract_params())
            assert all(bool(jax.numpy.isfinite(x).all()) for x in jax.tree.leaves(params))
            assert checkpointer.restore_meta(step)["step"] == step
            assert checkpointer.data_state(step) is not None
    finally:
        checkpointer.close()
    assert not [p for p in (run / "checkpoints").iterdir() if not p.name.isdigit()], "leftover temporary saves"

    # The race the loop above meets by chance: the trainer's retention deletes the step a reader is reading.
    restore = Checkpointer.restore_params

    def deleted_while_read(self, step, abstract):
        if step == STEPS:
            shutil.move(run / "checkpoints" / str(step), tmp_path / "retired")
        return restore(self, step, abstract)

    listed = Checkpointer.all_steps

    def deleted_while_listed(self):  # Orbax stat-s every step's directory: one just deleted fails the listing
        monkeypatch.setattr(Checkpointer, "all_steps", listed)
        raise FileNotFoundError(2, "No such file or directory", str(run / "checkpoints" / "3"))

    monkeypatch.setattr(Checkpointer, "all_steps", deleted_while_listed)
    assert session.load_params()[1] == STEPS  # listed again
    monkeypatch.setattr(Checkpointer, "restore_params", deleted_while_read)
    assert session.load_params()[1] == STEPS - 1  # the latest again, not a failed `jaxtrain eval`
    with pytest.raises(FileNotFoundError, match=r"deleted while being read .*checkpoint.keep=3"):
        shutil.move(tmp_path / "retired", run / "checkpoints" / str(STEPS))
        session.load_params(STEPS)  # a step asked for by name: said so
