"""Preemption and resume on a simulated pod (2 processes x 4 CPU devices, tests/pod.py).

The data position rule: the data order is a function of the global step alone (each step's global batch is
a fixed set of rows, see jaxtrain.data.loader), and a checkpoint stores the next step. So a run resumed on
any number of processes trains on exactly the batches an uninterrupted run would: no example is seen twice
or skipped. The tests check it with the batch checksum logged at every step.
"""

import json
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from jaxtrain import pipeline
from jaxtrain.config import load_run_config
from jaxtrain.train.preemption import EXIT_PREEMPTED
from jaxtrain.train.trainer import load_params

import pod
from conftest import tiny_config

MESH = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
STEPS = ["train.log_every=1", "checkpoint.every_steps=4", "eval.every_steps=1000", "checkpoint.keep=10", *MESH]
TOTAL = 24


def _copy(prepared, path):
    shutil.copytree(prepared, path, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
    return path


def _params(run):
    _, params, step = load_params(load_run_config(run), run)
    return step, [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]


@pytest.fixture(scope="module")
def uninterrupted(prepared_run, tmp_path_factory):
    run = _copy(prepared_run, tmp_path_factory.mktemp("pod") / "uninterrupted")
    pod.run(run, 2, 4, "--config", "tiny", f"train.steps={TOTAL}", *STEPS)
    return pod.train_log(run), _params(run)


def _same_batches(log, reference, steps):
    for s in steps:
        assert log[s]["batch_checksum"] == reference[s]["batch_checksum"], f"step {s} trained on other rows"
        np.testing.assert_allclose(log[s]["loss"], reference[s]["loss"], atol=1e-5, err_msg=f"step {s}")


@pytest.mark.slow  # 90-130 s on 2 cores; by default test_multiprocess (SIGTERM to the launcher: every worker saves
# and exits 75) and test_process_faults (SIGTERM, then a bit-identical resume) cover its parts
def test_sigterm_to_one_process_saves_the_same_step_everywhere_and_resumes_bit_identically(
        prepared_run, tmp_path, uninterrupted):
    reference_log, (reference_step, reference_params) = uninterrupted
    run = _copy(prepared_run, tmp_path / "preempted")
    procs = pod.launch(run, 2, 4, "--config", "tiny", f"train.steps={TOTAL}", *STEPS)
    deadline = time.time() + 300
    while time.time() < deadline and not any(r.get("step", 0) >= 3 for r in _lines(run)):
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # one host of the pod hears about the preemption
    codes, outs = pod.wait(procs)
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], "\n".join(o[-2000:] for o in outs)
    saved = int(outs[0].split("checkpoint of step ")[1].split()[0])
    assert saved < TOTAL
    positions = [json.loads(p.read_text()) for p in sorted((run / "checkpoints" / str(saved) / "data").glob("process_*"))]
    assert len(positions) == 2 and positions[0] == positions[1] == {"next_step": saved, "global_batch": 8}

    elastic = _copy(run, tmp_path / "two-to-one")  # this checkpoint, resumed by one process below
    shutil.copytree(run / "checkpoints", elastic / "checkpoints")
    shutil.copy(run / "metrics.jsonl", elastic / "metrics.jsonl")

    outs = pod.run(run, 2, 4, "--config", "tiny", f"train.steps={TOTAL}", *STEPS)
    assert f"resuming from checkpoint step {saved}" in outs[0]
    final_eval = json.loads((run / "evals.jsonl").read_text().splitlines()[-1])  # the last step evaluates
    assert final_eval["step"] == TOTAL and 0 <= final_eval["tasks/next_line/acc"] <= 1  # tasks run on a pod too
    step, params = _params(run)
    assert step == reference_step == TOTAL
    for a, b in zip(params, reference_params, strict=True):
        np.testing.assert_array_equal(a, b)

    # 2 processes -> 1: the single process continues on the pod's data order.
    pipeline.train(tiny_config(*STEPS, f"train.steps={TOTAL}"), elastic)
    _same_batches(pod.train_log(elastic), reference_log, range(saved + 1, TOTAL + 1))


def test_one_process_then_two_then_a_truncated_checkpoint_on_the_pod(prepared_run, tmp_path, uninterrupted):
    reference_log, _ = uninterrupted
    run = _copy(prepared_run, tmp_path / "one-to-two")
    # the same schedule as the reference (train.steps), stopped early as an interruption would
    pipeline.train(tiny_config(*STEPS, f"train.steps={TOTAL}"), run, max_steps_this_run=8)  # 1 process: 4, 8
    outs = pod.run(run, 2, 4, "--config", "tiny", f"train.steps={TOTAL}", "--max-steps", "8", *STEPS)  # 1 -> 2
    assert "resuming from checkpoint step 8" in outs[0]
    _same_batches(pod.train_log(run), reference_log, range(9, 17))

    for f in (run / "checkpoints" / "16" / "state").rglob("*"):  # damage the newest checkpoint
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    outs = pod.run(run, 2, 4, "--config", "tiny", f"train.steps={TOTAL}", "--max-steps", "8", *STEPS)
    assert all("process" in o and "restored step 12" in o for o in outs), outs  # every process, the same step
    assert (run / "checkpoints.corrupt" / "16").exists()  # set aside once, on process 0; training saved a new 16
    _same_batches(pod.train_log(run), reference_log, range(13, 21))


def _lines(run):
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return rows
