"""Atomic data stages (#16): killed at any publish point, the rerun ends in the outputs of an
uninterrupted run (hook that raises in-process; a real SIGKILL of a subprocess for tokenize)."""

import hashlib
import json
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

from jaxtrain import pipeline
from jaxtrain.config import from_dict, to_dict
from jaxtrain.data import prepare as data_prepare
from jaxtrain.data import shards, stages
from jaxtrain.data import tokenizer as tok
from jaxtrain.rundir import RunDir

from conftest import tiny_config

POINTS = {
    "curation": ("pipeline_done", "written", "cleared", "published"),
    "tokenizer": ("written", "cleared", "published"),
    "shards": ("tfds_written", "written", "cleared", "published"),
    "tasks": ("written", "cleared", "published"),
}


def _config(docs):
    return tiny_config(
        "data.sources=[{name: notes, type: files, filters: [], content: prose, path: '" + str(docs / "*.txt") + "'}]",
        "data.near_dedup=false", "data.eval_fraction=0.2", "tokenizer.vocab_size=300", "model.vocab_size=300")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted prepare of a small corpus (60 short documents)."""
    root = tmp_path_factory.mktemp("stages")
    docs = root / "docs"
    docs.mkdir()
    for i in range(60):
        (docs / f"d{i:02d}.txt").write_text(
            f"Document number {i} talks about topic {i % 7} at some length.\n"
            + f"The second line of document {i} says that the river {i % 5} is wide.\n" * 4)
    cfg = _config(docs)
    pipeline.prepare(cfg, root / "reference")
    return cfg, RunDir(root / "reference")


def _outputs(run: RunDir) -> dict:
    """What every stage produced, by content (decoded token shards, file bytes, marker digests)."""
    out = {}
    for stage in stages.STAGES:
        record = stages.marker(run, stage)
        assert record is not None, f"{stage}: no marker"
        out[f"{stage}:marker"] = (record["inputs"], record["digest"])
        assert not run.staging_dir(stage).exists(), f"{stage}: staging directory left behind"
    for directory in (run.clean, run.tokenizer_dir, run.tasks):
        for path in sorted(directory.iterdir()):
            if path.name != run.stage_marker("tasks").name:
                out[str(path.relative_to(run.root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    out["token_counts"] = shards.token_counts(run)
    for name in out["token_counts"]:
        split, source = name.split("_", 1)
        src = shards.data_source(run, split, source)
        out[f"shards:{name}"] = [np.asarray(src[i]["tokens"]).tolist() for i in range(len(src))]
    return out


def _copy_before(reference: RunDir, dest, stage: str) -> RunDir:
    """The reference run with `stage` and every later stage removed (as before their first build)."""
    shutil.copytree(reference.root, dest)
    run = RunDir(dest)
    for later in stages.STAGES[stages.STAGES.index(stage):]:
        shutil.rmtree(run.stage_dir(later))
    return run


class _Fault(Exception):
    pass


@pytest.mark.parametrize("stage,point", [(s, p) for s, points in POINTS.items() for p in points])
def test_a_stage_killed_at_each_publish_point_is_redone(reference, tmp_path, monkeypatch, stage, point):
    cfg, ref = reference
    expected = _outputs(ref)
    run = _copy_before(ref, tmp_path / "run", stage)

    def hook(s, p):
        if (s, p) == (stage, point):
            raise _Fault(f"{s}:{p}")

    monkeypatch.setattr(stages, "FAULT_HOOK", hook)
    with pytest.raises(_Fault):
        pipeline.prepare(cfg, run)
    assert stages.marker(run, stage) is None  # interrupted: not done, whatever is on disk
    monkeypatch.setattr(stages, "FAULT_HOOK", None)
    pipeline.prepare(cfg, run)
    assert _outputs(run) == expected


_KILL_AT = """
import os, signal, sys
from jaxtrain.data import stages
stage, point = sys.argv[1], sys.argv[2]
stages.FAULT_HOOK = lambda s, p: os.kill(os.getpid(), signal.SIGKILL) if (s, p) == (stage, point) else None
from jaxtrain import cli
sys.exit(cli.main(["tokenize", "--run-dir", sys.argv[3]]))
"""


@pytest.mark.parametrize("point", ["tfds_written", "published"])
def test_tokenize_killed_by_sigkill_then_rerun_matches(reference, tmp_path, point):
    """The issue's case: SIGKILL after the shards are written, before token_counts.json (and after
    the publish, before the marker). The rerun rebuilds; before, it wrote `{}` and train failed."""
    cfg, ref = reference
    run = _copy_before(ref, tmp_path / "run", "shards")
    killed = subprocess.run([sys.executable, "-c", _KILL_AT, "shards", point, str(run)], capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert stages.marker(run, "shards") is None
    assert (run.staging_dir("shards") if point == "tfds_written" else run.tfds).exists()
    if point == "tfds_written":  # rerun through the command line, with the run's recorded config
        rerun = subprocess.run([sys.executable, "-m", "jaxtrain.cli", "tokenize", "--run-dir", str(run)],
                               capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "[tokenize] encoding the cleaned corpus" in rerun.stdout
    pipeline.prepare(cfg, run)  # (and the tasks stage, not part of `tokenize`)
    assert _outputs(run) == _outputs(ref)


def test_a_rebuilt_tokenizer_keeps_its_fingerprint(reference, tmp_path):
    """Training again on the same text gives the same file (no temporary path stored in it), and a
    tokenizer written with a stored path (before this change) is kept when it equals the rebuild."""
    cfg, ref = reference
    run = _copy_before(ref, tmp_path / "run", "tokenizer")
    pipeline.prepare(cfg, run, through="tokenizer")
    assert tok.fingerprint(run.tokenizer) == tok.fingerprint(ref.tokenizer)
    assert b"/tmp" not in run.tokenizer.read_bytes() and str(tmp_path).encode() not in run.tokenizer.read_bytes()

    legacy = _with_model_prefix(run.tokenizer.read_bytes(), "/tmp/tmpabc123/tokenizer")
    assert legacy != run.tokenizer.read_bytes() and tok.same_model(legacy, run.tokenizer.read_bytes())
    run.tokenizer.write_bytes(legacy)
    run.stage_marker("tokenizer").unlink()  # a run directory from before the stage markers
    pipeline.prepare(cfg, run, through="tokenizer")
    assert run.tokenizer.read_bytes() == legacy  # its checkpoints' fingerprint still holds
    assert stages.marker(run, "tokenizer")["digest"] == tok.fingerprint(run.tokenizer)


def _with_model_prefix(model: bytes, prefix: str) -> bytes:
    """The serialized model with trainer_spec.model_prefix set, as a file-based training writes it."""
    message = tok._PrefixFreeModel.FromString(model)
    message.trainer_spec.model_prefix = prefix
    return message.SerializeToString()


def test_stage_inputs_decide_what_is_redone(reference, tmp_path):
    cfg, ref = reference
    run = RunDir(tmp_path / "run")
    shutil.copytree(ref.root, run.root)
    before = {s: stages.marker(run, s) for s in stages.STAGES}
    pipeline.prepare(_with(cfg, "data.curate_workers=2", "data.sources[0].weight=2", "train.steps=7"), run)
    assert {s: stages.marker(run, s) for s in stages.STAGES} == before  # execution and training settings
    pipeline.prepare(_with(cfg, "data.eval_fraction=0.3"), run)
    after = {s: stages.marker(run, s) for s in stages.STAGES}
    assert after["curation"]["inputs"] != before["curation"]["inputs"]
    assert after["curation"]["digest"] != before["curation"]["digest"]
    assert all(after[s]["inputs"] != before[s]["inputs"] for s in ("tokenizer", "shards", "tasks"))
    pipeline.prepare(_with(cfg, "tokenizer.vocab_size=320", "model.vocab_size=320"), run)
    again = {s: stages.marker(run, s) for s in stages.STAGES}
    assert again["curation"] == before["curation"]  # back to the first corpus: rebuilt, same digest
    assert again["tokenizer"]["inputs"]["tokenizer"]["vocab_size"] == 320


def _with(cfg, *overrides):
    """cfg with dotted overrides (list items by index: data.sources[0].weight=2)."""
    values = to_dict(cfg)
    for text in overrides:
        key, value = text.split("=", 1)
        node = values
        parts = [int(p) if p.isdigit() else p for p in key.replace("[", ".").replace("]", "").split(".")]
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = yaml.safe_load(value)
    return from_dict(values)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_bit(run):
    """One bit of the largest token shard, same size: only a digest of the contents sees it."""
    path = max(pathlib.Path(run.tfds).rglob("*.array_record*"), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("stage,damage,says", [
    ("shards", _flip_a_bit, "is damaged: its contents changed since the stage was built"),
    ("tokenizer", lambda run: _truncate(run.tokenizer), "tokenizer/tokenizer.model changed size since it was built"),
    # cut inside a protobuf field: the damaged model no longer parses (it is compared with the rebuilt one)
    ("tokenizer", lambda run: run.tokenizer.write_bytes(run.tokenizer.read_bytes()[:100]), "changed size since"),
    ("shards", lambda run: next(pathlib.Path(run.tfds).rglob("*.array_record*")).unlink(), "is gone since"),
    ("curation", lambda run: (run.clean / "stray.jsonl").write_text("{}\n"), "data/clean/stray.jsonl was added"),
])
def test_a_damaged_stage_is_rebuilt_not_trusted(reference, tmp_path, capsys, stage, damage, says):
    """A published stage damaged after its marker was written (a file deleted, truncated, added) is
    rebuilt on the next run, with a line saying why; the outputs are those of an undamaged run."""
    cfg, ref = reference
    run = RunDir(tmp_path / "run")
    shutil.copytree(ref.root, run.root)
    assert stages.marker(run, stage)["files"] == stages.stage_files(ref, stage)  # the marker lists the files
    damage(run)
    capsys.readouterr()
    pipeline.prepare(cfg, run)
    out = capsys.readouterr().out
    assert f"[{stage}] " in out and says in out and "; rebuilding" in out, out
    assert _outputs(run) == _outputs(ref)
    assert stages.damage(run, stage, stages.marker(run, stage)) is None


def test_a_pod_refuses_a_damaged_shard_naming_it(reference, tmp_path):
    """A pod does not rebuild data: the damaged shard is named with the command that redoes the stage."""
    _, ref = reference
    run = RunDir(tmp_path / "run")
    shutil.copytree(ref.root, run.root)
    assert data_prepare.missing_stages(run) == []
    path = _flip_a_bit(run)
    [missing] = data_prepare.missing_stages(run)
    assert missing.startswith("tokenize (") and path.name in missing and "is damaged" in missing


def test_a_marker_without_a_file_list_is_trusted(reference, tmp_path):
    """Markers written before the file list: reused as before (their files are not compared)."""
    cfg, ref = reference
    run = RunDir(tmp_path / "run")
    shutil.copytree(ref.root, run.root)
    record = stages.marker(run, "tokenizer")
    del record["files"]
    run.stage_marker("tokenizer").write_text(json.dumps(record))
    (run.tokenizer_dir / "notes.txt").write_text("a file the old marker does not know")
    pipeline.prepare(cfg, run, through="tokenizer")
    assert stages.marker(run, "tokenizer") == record and (run.tokenizer_dir / "notes.txt").exists()
