"""Multi-host paths on a simulated pod (tests/pod.py): N processes x M CPU devices over gloo, meshes whose
data, fsdp and tensor axes span processes. Each run's first steps must match a single process training on
the same global batch: same rows in the batch (checksum), same losses."""

import shutil

import numpy as np
import pytest

from jaxtrain import pipeline

import pod
from conftest import tiny_config

STEPS = ["train.steps=20", "train.log_every=1", "checkpoint.every_steps=20", "eval.every_steps=1000"]
# (processes x devices, device order, mesh): which axes span processes is noted beside each.
LAYOUTS = {
    "2x4-data": (2, 4, "process", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]),  # data spans
    "2x4-fsdp": (2, 4, "process", ["mesh.data=1", "mesh.fsdp=8", "mesh.tensor=1"]),  # fsdp spans
    "2x4-tensor": (2, 4, "interleaved", ["mesh.data=4", "mesh.fsdp=1", "mesh.tensor=2"]),  # tensor spans
    "4x2-data-fsdp": (4, 2, "process", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]),  # data and fsdp span
    "4x2-fsdp-tensor": (4, 2, "interleaved", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]),  # fsdp, tensor span
}


@pytest.fixture(scope="module")
def reference(prepared_run, tmp_path_factory):
    """One process, 8 devices, the same global batch: the run every pod layout must reproduce."""
    run = tmp_path_factory.mktemp("single") / "run"
    shutil.copytree(prepared_run, run, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
    pipeline.train(tiny_config(*STEPS, "mesh.data=8"), run)
    return pod.train_log(run)


def _check_layout(name, prepared_run, tmp_path, reference):
    processes, devices, order, mesh = LAYOUTS[name]
    run = tmp_path / name
    shutil.copytree(prepared_run, run, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
    outs = pod.run(run, processes, devices, "--config", "tiny", *STEPS, *mesh, order=order)
    assert f"on {processes * devices} cpu devices" in outs[0]
    got = pod.train_log(run)
    assert sorted(got) == sorted(reference) == list(range(1, 21))
    for step in range(1, 21):
        assert got[step]["batch_checksum"] == reference[step]["batch_checksum"], f"{name}: step {step} batch differs"
    np.testing.assert_allclose([got[s]["loss"] for s in range(1, 21)], [reference[s]["loss"] for s in range(1, 21)],
                               atol=1e-5, err_msg=name)


# 2x4-data is a soak (46 s on 2 cores): 4x2-fsdp-tensor, whose model axes span processes, runs by default
@pytest.mark.parametrize("name", [pytest.param("2x4-data", marks=pytest.mark.slow), "4x2-fsdp-tensor"])
def test_pod_layouts_train_on_exactly_the_single_process_batches(name, prepared_run, tmp_path, reference):
    _check_layout(name, prepared_run, tmp_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["2x4-fsdp", "2x4-tensor", "4x2-data-fsdp"])
def test_pod_layouts_soak(name, prepared_run, tmp_path, reference):
    _check_layout(name, prepared_run, tmp_path, reference)
