"""Restore that tells the truth: only the unreadable is set aside, transient errors are retried, a checkpoint
that does not fit the new settings is refused with the differing keys and left in place (config untouched)."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
import pytest

from jaxtrain import pipeline
from jaxtrain.config import to_dict
from jaxtrain.models.transformer import execution_fields
from jaxtrain.train import resume
from jaxtrain.train import trainer as trainer_lib
from jaxtrain.rundir import RunDir
from jaxtrain.train.checkpoint import CheckpointDamaged, Checkpointer

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


def test_a_checkpoint_missing_its_data_position_is_set_aside_not_replayed_from_zero(run, capsys):
    """#23.2: it used to resume at step 4 from data position 0, training the first batches again."""
    shutil.rmtree(run / "checkpoints" / "4" / "data")
    result = pipeline.train(tiny_config(*BASE, "train.steps=6"), run)
    out = capsys.readouterr().out
    assert 'no "data" item' in out and "using checkpoint 2 instead of the latest (4)" in out
    assert result["step"] == 6 and [p.name for p in (run / "checkpoints.corrupt").iterdir()] == ["4"]


def test_a_changed_global_batch_names_train_batch_size_and_moves_nothing(run):
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(resume.IncompatibleCheckpoint, match=r"checkpoints/4: trained with train.batch_size=8 \(the "
                                                           r"global batch\), this run has train.batch_size=16.*"
                                                           r"The checkpoint was left where it is"):
        pipeline.train(tiny_config(*BASE, "train.steps=6", "train.batch_size=16"), run)
    assert _steps(run) == [2, 4] and not (run / "checkpoints.corrupt").exists()
    assert (run / "config.yaml").read_text() == config_before


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


def _orbax_wrapped(cause: BaseException) -> Exception:
    """What Orbax raises when a shard read fails: a bare Exception raised from TensorStore's error."""
    try:
        raise Exception("Encountered error while reading array index: (slice(0, 64, 1),).") from cause
    except Exception as e:
        return e


@pytest.mark.parametrize("error, verdict", [
    # words that once decided, in exceptions that are not storage errors (a bug): not retried, nothing moved
    (RuntimeError("checkpoint is corrupt or truncated: HTTP 500 from the bucket"), resume.FAILED),
    (ValueError("corrupt batch: Error reading row 503, Unexpected end"), resume.FAILED),
    (KeyError('Item "meta" was not found'), resume.FAILED),
    (RuntimeError("UNAVAILABLE: a bug that prints a status code"), resume.FAILED),
    # storage errors by type
    (ConnectionError("reset by peer"), resume.UNAVAILABLE),
    (TimeoutError(), resume.UNAVAILABLE),
    (FileNotFoundError("gone"), resume.UNREADABLE),
    (CheckpointDamaged("ckpt/4: its metadata describes no arrays."), resume.UNREADABLE),
    # TensorStore: a bare ValueError whose status code is the message's prefix
    (ValueError("UNAVAILABLE: HTTP response code: 503 with body: ..."), resume.UNAVAILABLE),
    (ValueError("DATA_LOSS: Error decoding manifest"), resume.UNREADABLE),
    (ValueError("PERMISSION_DENIED: HTTP response code: 403"), resume.FAILED),
    (_orbax_wrapped(ValueError("OUT_OF_RANGE: Requested byte range [0, 10356) is not valid")), resume.UNREADABLE),
    (_orbax_wrapped(ValueError("DEADLINE_EXCEEDED: read timed out")), resume.UNAVAILABLE),
])
def test_the_verdict_comes_from_the_exception_type_not_its_words(error, verdict):
    assert resume.classify(error) == verdict


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """One step of a two-array state, saved by the run's Checkpointer (no training)."""
    root = tmp_path_factory.mktemp("tiny") / "run"
    ckpt = Checkpointer(RunDir(root), keep=2, async_save=False)
    ckpt.save(1, {"w": jnp.arange(4096, dtype=jnp.float32).reshape(64, 64), "b": jnp.ones(64)}, None, {"step": 1})
    ckpt.close()
    return root


def _largest_file(step_dir):
    return max((f for f in (step_dir / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


@pytest.mark.parametrize("damage", ["metadata_not_json", "metadata_deleted", "state_deleted", "meta_deleted",
                                    "array_file_truncated"])
def test_real_damage_reads_as_unreadable(tiny_checkpoint, tmp_path, damage):
    """Damage done to a real checkpoint: the first read that fails (in restore_latest_valid's order) says so."""
    root = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, root)
    step_dir = root / "checkpoints" / "1"
    if damage == "metadata_not_json":
        (step_dir / "state" / "_METADATA").write_bytes(b"\x00\xffnot json")
    elif damage == "metadata_deleted":
        (step_dir / "state" / "_METADATA").unlink()
    elif damage in ("state_deleted", "meta_deleted"):
        shutil.rmtree(step_dir / damage.split("_")[0])
    else:
        big = _largest_file(step_dir)
        big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    ckpt = Checkpointer(RunDir(root), keep=2, async_save=False)
    abstract = {"w": jax.ShapeDtypeStruct((64, 64), jnp.float32), "b": jax.ShapeDtypeStruct((64,), jnp.float32)}
    with pytest.raises(Exception) as raised:
        ckpt.restore_meta(1)
        ckpt.state_metadata(1)
        ckpt.restore(1, abstract)
    ckpt.close()
    assert resume.classify(raised.value) == resume.UNREADABLE, repr(raised.value)


def test_a_transient_error_while_reading_array_metadata_is_not_damage(tiny_checkpoint, monkeypatch):
    """Orbax's own Checkpointer.metadata turns every ValueError into "no metadata"; TensorStore's UNAVAILABLE
    must stay a storage outage (retried), not become a damaged checkpoint (moved aside)."""
    def down(self, directory):
        raise ValueError("UNAVAILABLE: HTTP response code: 503 with body: Service Unavailable")

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "metadata", down)
    ckpt = Checkpointer(RunDir(tiny_checkpoint), keep=2, async_save=False)
    with pytest.raises(ValueError) as raised:
        ckpt.state_metadata(1)
    ckpt.close()
    assert resume.classify(raised.value) == resume.UNAVAILABLE


def test_only_the_model_fields_marked_execution_may_differ_from_the_checkpoint():
    cfg = tiny_config()
    meta = {"tokenizer_fingerprint": "fp", "config": to_dict(cfg)}
    changed = {"dtype": "bfloat16", "attention": "xla", "attention_interpret": True, "scan_layers": False,
               "remat": "full"}
    assert set(changed) == execution_fields()
    resume.check_compatible(meta, dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changed)), "fp", "c")
    saved = to_dict(cfg)  # a checkpoint that stores other master weights (a run config can no longer ask for them)
    bf16 = {**meta, "config": {**saved, "model": {**saved["model"], "param_dtype": "bfloat16"}}}
    with pytest.raises(resume.IncompatibleCheckpoint, match="model.param_dtype"):
        resume.check_compatible(bf16, cfg, "fp", "c")
