"""Checkpoint discipline and recovery: corrupt checkpoints, wrong checkpoints, resharding, spikes."""

import errno
import json
import os
import pathlib
import re
import shutil
import time

import jax
import numpy as np
import pytest
from etils import epath
from etils import epath

from jaxtrain import cli, pipeline
from jaxtrain.train import loop
from jaxtrain.train.checkpoint import CheckpointDamaged
from jaxtrain.train.resume import IncompatibleCheckpoint

from conftest import tiny_config

BASE = ["checkpoint.every_steps=2", "eval.every_steps=1000", "train.log_every=1", "checkpoint.keep=5"]


def _losses(run: pathlib.Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_corrupt_latest_checkpoint_falls_back_to_previous(fresh_run, capsys):
    cfg = tiny_config(*BASE, "train.steps=6")
    pipeline.train(cfg, fresh_run)
    ckpt = fresh_run / "checkpoints"
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [2, 4, 6]
    # Truncate every array file of the latest checkpoint's state.
    for f in (ckpt / "6" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    capsys.readouterr()
    result = pipeline.train(tiny_config(*BASE, "train.steps=8", "optimizer.decay_steps=6"), fresh_run)
    out = capsys.readouterr().out
    assert "checkpoint" in out and "corrupt or truncated" in out and "resuming from checkpoint step 4" in out
    assert result["step"] == 8


def test_deleted_checkpoint_files_fall_back_too(fresh_run, capsys):
    pipeline.train(tiny_config(*BASE, "train.steps=4"), fresh_run)
    shutil.rmtree(fresh_run / "checkpoints" / "4" / "state")
    capsys.readouterr()
    pipeline.train(tiny_config(*BASE, "train.steps=6"), fresh_run)
    assert "resuming from checkpoint step 2" in capsys.readouterr().out


def _flip_a_bit_of(run: pathlib.Path, step: int) -> pathlib.Path:
    """Flip one bit in the middle of the checkpoint's largest array-data file (Orbax stores arrays zstd
    compressed, without a checksum: such a flip decodes to different numbers, as a new user found)."""
    data_files = [f for f in (run / "checkpoints" / str(step) / "state").rglob("*") if f.parent.name == "d"]
    f = max(data_files, key=lambda p: p.stat().st_size)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    return f


def test_a_flipped_bit_in_array_data_is_named_and_the_previous_checkpoint_used(fresh_run, capsys):
    pipeline.train(tiny_config(*BASE, "train.steps=4"), fresh_run)
    _flip_a_bit_of(fresh_run, 4)
    capsys.readouterr()
    result = pipeline.train(tiny_config(*BASE, "train.steps=6"), fresh_run)
    out = capsys.readouterr().out
    assert "does not match its checksum" in out and "resuming from checkpoint step 2" in out
    assert (fresh_run / "checkpoints.corrupt" / "4").is_dir() and result["step"] == 6
    assert np.isfinite(_losses(fresh_run)[6])


def test_readers_check_the_parameters_checksums(fresh_run):
    pipeline.train(tiny_config(*BASE, "train.steps=2"), fresh_run)
    session = pipeline.build_session(tiny_config(*BASE), fresh_run)
    session.load_params(2)
    meta_file = fresh_run / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    assert set(meta["array_checksums"]) == {"step", "rng"} | {k for k in meta["array_checksums"] if k.split("/")[0] in
                                                        ("params", "opt_state", "guard")}
    meta["array_checksums"]["params/head_DxV"] = "0" * 16  # as if the array's bits had changed since
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointDamaged, match="array params/head_DxV does not match its checksum"):
        session.load_params(2)  # eval, sample and export read the parameters this way


def test_the_checksum_catches_what_plain_sums_miss():
    """A new user's trial: two sign-bit flips in opposite directions, or two flips of one bit at an even
    distance, left a plain and a position-weighted sum unchanged; every such pair changes the checksum now."""
    from jaxtrain.train.checksums import checksums

    x = np.linspace(-2, 2, 64, dtype=np.float32)
    bits = x.view(np.uint32).copy()
    before = checksums({"x": jax.numpy.asarray(x)})["x"]
    for i, j, bit in ((3, 40, 31), (10, 12, 30), (0, 2, 7)):
        flipped = bits.copy()
        flipped[i] ^= np.uint32(1 << bit)
        flipped[j] ^= np.uint32(1 << bit)
        assert checksums({"x": jax.numpy.asarray(flipped.view(np.float32))})["x"] != before, (i, j, bit)
    swapped = x.copy()
    swapped[[5, 6]] = swapped[[6, 5]]
    assert checksums({"x": jax.numpy.asarray(swapped)})["x"] != before


def test_a_damaged_data_position_or_set_aside_failure_is_named(fresh_run, capsys, monkeypatch):
    """A new user's trial: a flipped bit in the data position skipped ten batches silently; a checkpoint that
    could not be moved aside (checkpoints/ on another filesystem) ended every rerun in a traceback."""
    pipeline.train(tiny_config(*BASE, "train.steps=4"), fresh_run)
    position = fresh_run / "checkpoints" / "4" / "data" / "process_0-of-1.json"
    position.write_text(position.read_text().replace('"next_step": 4', '"next_step": 6'))
    gpath = type(epath.Path("/"))
    real_rename, moved = gpath.rename, []

    def cross_device(self, target):  # as os.rename across filesystems
        if "checkpoints.corrupt" in str(target):
            moved.append(target)
            raise OSError(18, "Invalid cross-device link")
        return real_rename(self, target)

    monkeypatch.setattr(gpath, "rename", cross_device)
    capsys.readouterr()
    pipeline.train(tiny_config(*BASE, "train.steps=6"), fresh_run)
    out = capsys.readouterr().out
    assert "does not match its digest in meta" in out and "resuming from checkpoint step 2" in out
    assert moved and (fresh_run / "checkpoints.corrupt" / "4").is_dir()  # moved by copying, the rename refused


def test_a_shard_damaged_during_training_stops_in_one_line(fresh_run, monkeypatch):
    """A new user's trial: ArrayRecord's chunk-hash error mid-run was a 55-line traceback naming no file."""
    from jaxtrain.data import loader
    from jaxtrain.data.shards import ShardDamaged

    real_next, drawn = loader.TrainBatches.__next__, []

    def damaged(self):
        drawn.append(1)
        if len(drawn) == 3:
            raise RuntimeError("Corrupted Riegeli/records file: chunk data hash mismatch at 95662")
        return real_next(self)

    monkeypatch.setattr(loader.TrainBatches, "__next__", damaged)
    with pytest.raises(ShardDamaged, match=r"data/tfds: a token shard is damaged \(Corrupted Riegeli.*rerun the same"):
        pipeline.train(tiny_config(*BASE, "train.steps=4"), fresh_run)


def test_incompatible_model_or_tokenizer_is_refused(fresh_run):
    pipeline.train(tiny_config(*BASE, "train.steps=2"), fresh_run)
    with pytest.raises(IncompatibleCheckpoint, match=r"model\.num_layers: checkpoint 2 vs config 3"):
        pipeline.train(tiny_config(*BASE, "train.steps=4", "model.num_layers=3"), fresh_run)
    # Execution-only changes (remat, scan) and a new mesh are fine.
    pipeline.train(tiny_config(*BASE, "train.steps=4", "model.remat=full", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"),
               fresh_run)
    tok = fresh_run / "tokenizer" / "tokenizer.model"
    tok.write_bytes(tok.read_bytes() + b"\x00")
    with pytest.raises(IncompatibleCheckpoint, match="tokenizer"):
        pipeline.train(tiny_config(*BASE, "train.steps=6"), fresh_run)


@pytest.mark.slow  # the default suite resumes on other meshes in tests/test_pod_resume.py (2 -> 1, 1 -> 2)
def test_resume_on_a_different_mesh_keeps_the_loss_curve(fresh_run, tmp_path):
    """Save on 8 devices as 2x2x2; resume on 4 devices, and on 8 as 8x1x1: same curve."""
    steps = ["train.steps=6", "checkpoint.every_steps=2"]
    layouts = {
        "ref": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
        "four": ["mesh.data=2", "mesh.fsdp=1", "mesh.tensor=2"],
        "flat": ["mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1"],
    }
    reference = pipeline.train(tiny_config(*BASE, *steps, *layouts["ref"]), fresh_run)
    ref_losses = _losses(fresh_run)
    for name, devices in (("four", jax.devices()[:4]), ("flat", None)):
        run = tmp_path / name
        shutil.copytree(fresh_run, run, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
        pipeline.train(tiny_config(*BASE, *steps, *layouts["ref"]), run, max_steps_this_run=2)
        result = pipeline.train(tiny_config(*BASE, *steps, *layouts[name]), run, devices=devices)
        assert result["step"] == 6
        got = _losses(run)
        for s in range(3, 7):
            np.testing.assert_allclose(got[s], ref_losses[s], rtol=1e-4, err_msg=f"{name} step {s}")
        for a, b in zip(jax.tree.leaves(result["state"].params), jax.tree.leaves(reference["state"].params), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_nan_and_spike_are_skipped_and_logged(fresh_run):
    # a 100x loss spike has a z-score in the thousands; 100 keeps natural batch-to-batch swings (code vs
    # prose batches) in a window this short from counting as spikes
    cfg = tiny_config(*BASE, "train.steps=14", "train.spike_min_history=4", "train.spike_window=8", "train.spike_zscore=100")
    faults = {9: float("nan"), 11: 100.0}
    result = pipeline.train(cfg, fresh_run, fault_injector=faults.get)
    rows = [json.loads(line) for line in (fresh_run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    skipped = {r["step"]: r["skipped_steps"] for r in rows}
    assert skipped[9] == 0 and skipped[10] == 1 and skipped[12] == 2 and skipped[14] == 2
    assert result["step"] == 14 and np.isfinite(rows[-1]["loss"])
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(result["state"].params))


def test_repeated_bad_steps_roll_back_then_give_up(fresh_run, capsys):
    cfg = tiny_config(*BASE, "train.steps=12", "train.max_bad_steps=2", "train.max_rollbacks=1")
    bad_once = {b: float("nan") for b in (5, 6)}  # batches 5 and 6 (0-based) feed steps 6 and 7
    result = pipeline.train(cfg, fresh_run, fault_injector=bad_once.get)
    out = capsys.readouterr().out
    assert "rollback 1: 2 bad steps in a row at step 7" in out and "restored checkpoint 4" in out
    assert "skipping the 3 batches since then" in out
    assert result["step"] == 12 and result["rollbacks"] == 1

    always_bad = lambda step: float("nan")  # noqa: E731
    other = fresh_run.parent / "diverging"
    shutil.copytree(fresh_run, other, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
    with pytest.raises(loop.TrainingDiverged, match=r"training cannot recover at step 2 .*no earlier checkpoint"):
        pipeline.train(cfg, other, fault_injector=always_bad)


def _fail_checkpoint_writes(monkeypatch, method: str, error: int, from_step: int) -> list[float]:
    """Path.`method` fails with `error` inside the save of every step from `from_step` on, as a read-only or full
    disk would (chmod does not stop root); returns the times it failed."""
    failed, path_type = [], type(epath.Path("/"))
    original = getattr(path_type, method)

    def failing(self, *args, **kwargs):
        step = re.search(r"/checkpoints/(\d+)\.orbax-checkpoint-tmp", str(self))
        if step and int(step.group(1)) >= from_step:
            failed.append(time.perf_counter())
            raise OSError(error, os.strerror(error), str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(path_type, method, failing)
    return failed


def _train_cli(run: pathlib.Path, *overrides: str) -> int:
    return cli.main(["train", "--config", "tiny", "--run-dir", str(run), *BASE, *overrides])


def _last_step(run: pathlib.Path) -> int:
    return max(_losses(run))


def test_an_unwritable_checkpoint_directory_stops_training_at_once_in_one_line(fresh_run, monkeypatch, capfd):
    failed = _fail_checkpoint_writes(monkeypatch, "mkdir", errno.EACCES, from_step=4)
    code = _train_cli(fresh_run, "train.steps=40")
    stopped = time.perf_counter()
    out, err = capfd.readouterr()
    ckpt = fresh_run / "checkpoints"
    assert code == 2 and err.count("\n") == 1, err[-3000:]
    assert err.startswith(f"error: {ckpt}/4: the checkpoint could not be written: Permission denied ({ckpt}/4.")
    assert f"; fix the permissions of {ckpt}, or train in a writable run directory (--run-dir); it resumes from " \
           "step 2, the last committed checkpoint." in err
    assert stopped - failed[0] < 10 and _last_step(fresh_run) == 4  # Orbax's own wait for the save is 300 s
    log = err.rsplit("(traceback: ", 1)[1].rstrip(")\n")
    assert log.startswith(str(fresh_run / "logs" / "error-")) and "Traceback" in open(log).read()
    assert sorted(p.name for p in ckpt.iterdir() if p.name.isdigit()) == ["2"]


def test_a_full_disk_in_the_background_write_stops_before_the_next_save_in_one_line(fresh_run, monkeypatch, capfd):
    """The write fails in Orbax's background threads (the data position's and the step's metadata files); each
    logs it with a traceback: hundreds of lines on the console before the one line."""
    _fail_checkpoint_writes(monkeypatch, "write_text", errno.ENOSPC, from_step=10)
    code = _train_cli(fresh_run, "train.steps=40", "checkpoint.every_steps=10")
    out, err = capfd.readouterr()
    assert code == 2 and err.count("\n") == 1, err[-3000:]
    ckpt = fresh_run / "checkpoints"
    assert re.match(rf"error: {ckpt}/10: the checkpoint could not be written: No space left on device "
                    rf"\({ckpt}/10\.orbax-checkpoint-tmp.*\); the disk is full: free space", err)
    assert "it resumes from" not in err  # no committed checkpoint before it
    assert _last_step(fresh_run) < 20  # not trained on until the next save found it
    log = err.rsplit("(traceback: ", 1)[1].rstrip(")\n")
    assert "No space left on device" in open(log).read()
