"""Restore that tells the truth: only the unreadable is set aside, transient errors are retried, a checkpoint
that does not fit the new settings is refused with the differing keys and left in place (config untouched)."""

import json
import shutil

import optax
import pytest

from jaxtrain import pipeline
from jaxtrain.train import resume
from jaxtrain.train import trainer as trainer_lib
from jaxtrain.train.checkpoint import Checkpointer

from conftest import tiny_config

BASE = ["checkpoint.every_steps=2", "eval.every_steps=1000", "train.log_every=1", "checkpoint.keep=5"]


@pytest.fixture(scope="module")
def trained(prepared_run, tmp_path_factory):
    """A run with checkpoints 2 and 4."""
    run = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(prepared_run, run, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
    pipeline.train(tiny_config(*BASE, "train.steps=4"), run)
    return run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _steps(run):
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def test_a_transient_read_error_is_retried_and_moves_nothing(run, monkeypatch, capsys):
    failures = iter([ConnectionError("UNAVAILABLE: connection reset by peer")] * 2)
    real = Checkpointer.restore

    def flaky(self, *args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "restore", flaky)
    monkeypatch.setattr(resume, "_sleep", lambda seconds: None)
    result = pipeline.train(tiny_config(*BASE, "train.steps=6"), run)
    out = capsys.readouterr().out
    assert "unavailable" in out and "retrying" in out and "resuming from checkpoint step 4" in out
    assert result["step"] == 6 and not (run / "checkpoints.corrupt").exists()


def test_a_persistent_storage_error_stops_without_moving_anything(run, monkeypatch):
    def down(self, *args, **kwargs):
        raise OSError("UNAVAILABLE: storage.googleapis.com: 503 Service Unavailable")

    monkeypatch.setattr(Checkpointer, "restore", down)
    monkeypatch.setattr(resume, "_sleep", lambda seconds: None)
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(resume.CheckpointUnavailable, match=r"checkpoints/4: could not read its arrays after 4 "
                                                           r"attempts .*nothing was moved"):
        pipeline.train(tiny_config(*BASE, "train.steps=6"), run)
    assert _steps(run) == [2, 4] and not (run / "checkpoints.corrupt").exists()
    assert (run / "config.yaml").read_text() == config_before


def test_a_changed_guard_window_is_refused_and_the_run_is_left_as_it_was(run):
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(resume.IncompatibleCheckpoint, match=r"guard/losses: checkpoint \(128,\) vs run \(64,\).*"
                                                           r"The checkpoint was left where it is"):
        pipeline.train(tiny_config(*BASE, "train.steps=6", "train.spike_window=64"), run)
    assert _steps(run) == [2, 4] and not (run / "checkpoints.corrupt").exists()
    assert (run / "config.yaml").read_text() == config_before  # not rewritten by the refused run
    result = pipeline.train(tiny_config(*BASE, "train.steps=6"), run)  # the saved settings resume, no restart
    assert result["step"] == 6


def test_a_changed_optimizer_structure_is_refused_with_the_differing_keys(run, monkeypatch):
    real = trainer_lib.optimizer.make_optimizer

    def with_ema(*args, **kwargs):  # an optimizer with one more stateful transform than the checkpoint's
        return optax.chain(real(*args, **kwargs), optax.ema(0.9))

    monkeypatch.setattr(trainer_lib.optimizer, "make_optimizer", with_ema)
    with pytest.raises(resume.IncompatibleCheckpoint, match=r"opt_state/1/\.\.\. \(\d+ arrays\): only in this run"
                                                           r".*The checkpoint was left where it is"):
        pipeline.train(tiny_config(*BASE, "train.steps=6"), run)
    assert _steps(run) == [2, 4] and not (run / "checkpoints.corrupt").exists()


def test_switching_gradient_clipping_off_or_on_resumes(run):
    """optimizer.grad_clip=0 keeps the clipping transform in the chain (infinite threshold): the optimizer
    state keeps its structure, so the setting can change on a resume."""
    assert pipeline.train(tiny_config(*BASE, "train.steps=6", "optimizer.grad_clip=0"), run)["step"] == 6


def test_lines_written_after_a_resume_carry_the_resume_count(run):
    pipeline.train(tiny_config(*BASE, "train.steps=6"), run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"]: r["resume"] for r in rows if "loss" in r} == {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 1}
