"""Real process faults: SIGKILL at random moments, SIGTERM preemption (subprocesses)."""

import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxtrain.config import load_run_config
from jaxtrain import pipeline
from jaxtrain.train.trainer import load_params
from jaxtrain.train.preemption import EXIT_PREEMPTED

from conftest import tiny_config

STEPS = ["train.steps=14", "checkpoint.every_steps=2", "eval.every_steps=1000", "train.log_every=1"]


def _start(run_dir: pathlib.Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jaxtrain.cli", "train", "--config", "tiny", "--run-dir", str(run_dir), *overrides]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))


def _final_params(run_dir: pathlib.Path):
    _, params, step = load_params(load_run_config(run_dir), run_dir)
    return step, [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]


def _kill_and_resume_matches_uninterrupted(prepared: pathlib.Path, tmp_path: pathlib.Path, trials: int, seed: int):
    import shutil

    reference = tmp_path / "reference"
    shutil.copytree(prepared, reference, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
    pipeline.train(tiny_config(*STEPS), reference)
    ref_step, ref_params = _final_params(reference)
    rng = random.Random(seed)
    for trial in range(trials):
        run = tmp_path / f"killed{trial}"
        shutil.copytree(prepared, run, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
        proc = _start(run, *STEPS)
        deadline = time.time() + 240
        while not (run / "checkpoints" / "2").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere mid-run: mid-step, mid-save or between
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        resumed = subprocess.run(
            [sys.executable, "-m", "jaxtrain.cli", "train", "--run-dir", str(run)], capture_output=True, text=True
        )
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
        step, params = _final_params(run)
        assert step == ref_step == 14
        for a, b in zip(params, ref_params, strict=True):
            np.testing.assert_array_equal(a, b)


def test_sigkill_at_random_points_then_resume_is_bit_identical(prepared_run, tmp_path):
    _kill_and_resume_matches_uninterrupted(prepared_run, tmp_path, trials=1, seed=0)  # the soak below: 10


@pytest.mark.slow
def test_sigkill_soak(prepared_run, tmp_path):
    _kill_and_resume_matches_uninterrupted(prepared_run, tmp_path, trials=10, seed=1)


def test_sigterm_saves_the_current_step_and_resume_continues(prepared_run, tmp_path):
    import shutil

    run = tmp_path / "preempted"
    shutil.copytree(prepared_run, run, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
    proc = _start(run, "train.steps=500", "checkpoint.every_steps=1000", "eval.every_steps=1000", "train.log_every=1")
    for line in proc.stdout:
        if re.match(r"step\s+3/500", line):
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, out[-3000:]
    saved = int(re.search(r"checkpoint of step (\d+) committed", out).group(1))
    assert saved >= 3 and (run / "checkpoints" / str(saved)).exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "jaxtrain.cli", "train", "--run-dir", str(run), "train.steps=" + str(saved + 2),
         "optimizer.decay_steps=500"],  # stop early on the preempted run's curve
        capture_output=True, text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from checkpoint step {saved}" in resumed.stdout
    assert f"step {saved + 2:>6}/{saved + 2}" in resumed.stdout
