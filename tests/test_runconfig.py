"""One config per run directory, checks before work, one-line expected failures (#16)."""

import collections
import errno
import os
import re
import shutil

import pytest
import yaml

from jaxtrain import cli, runconfig, yamlconf
from jaxtrain.config import load_config
from jaxtrain.data import curation_report, shards, stages
from jaxtrain.data import prepare as data_prepare
from jaxtrain.data import tokenizer as tok
from jaxtrain.errors import ConfigError, expected_failure
from jaxtrain.rundir import RunDir
from jaxtrain.train import loop


def _docs(directory, n, word):
    directory.mkdir()
    for i in range(n):
        (directory / f"{word}{i:02d}.txt").write_text(
            f"{word.title()} document {i} talks about topic {i % 7} at some length.\n" * 5)
    return str(directory / "*.txt")


def _config_file(tmp_path, name, sources, vocab=300):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "base": "tiny",
        "data": {"sources": sources, "near_dedup": False, "eval_fraction": 0.2},
        "tokenizer": {"vocab_size": vocab}, "model": {"vocab_size": vocab},
    }))
    return str(path)


@pytest.fixture
def corpus(tmp_path):
    notes = {"name": "notes", "type": "files", "filters": [], "content": "prose", "path": _docs(tmp_path / "n", 30, "note")}
    memos = {"name": "memos", "type": "files", "filters": [], "content": "prose", "path": _docs(tmp_path / "m", 30, "memo")}
    return notes, memos


def test_stage_commands_share_the_config_of_the_first(tmp_path, corpus, capsys):
    """Issue #16.5: `prepare --config X` then `tokenizer --run-dir RUN` used the demo preset (2048
    pieces); now the first command records X and the next one uses it."""
    notes, _ = corpus
    run = RunDir(tmp_path / "run")
    assert cli.main(["prepare", "--config", _config_file(tmp_path, "x", [notes]), "--run-dir", str(run)]) == 0
    assert runconfig.recorded(run).tokenizer.vocab_size == 300
    assert cli.main(["tokenizer", "--run-dir", str(run)]) == 0
    assert tok.load(run.tokenizer).vocab_size == 300
    assert "[prepare] reusing cleaned corpus" in capsys.readouterr().out


def test_a_new_source_reruns_curation_and_everything_after(tmp_path, corpus, capsys):
    notes, memos = corpus
    run = RunDir(tmp_path / "run")
    assert cli.main(["tokenize", "--config", _config_file(tmp_path, "x", [notes]), "--run-dir", str(run)]) == 0
    first = stages.marker(run, "tokenizer")["digest"]
    assert set(shards.token_counts(run)) == {"train_notes", "validation_notes"}
    capsys.readouterr()
    assert cli.main(["tokenize", "--config", _config_file(tmp_path, "y", [notes, memos]), "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "[config] differs from" in out and "data.sources" in out and "are redone" in out
    assert "[prepare] curating 2 sources" in out and "[tokenizer] training" in out
    assert set(shards.token_counts(run)) == {f"{s}_{n}" for s in ("train", "validation") for n in ("notes", "memos")}
    assert stages.marker(run, "tokenizer")["digest"] != first
    assert runconfig.recorded(run).data.source_names == ["notes", "memos"]


def test_a_trained_run_refuses_other_data_and_accepts_training_changes(tmp_path, corpus, capsys):
    notes, memos = corpus
    run = RunDir(tmp_path / "run")
    x = _config_file(tmp_path, "x", [notes])
    assert cli.main(["prepare", "--config", x, "--run-dir", str(run)]) == 0
    (run.checkpoints / "10").mkdir(parents=True)  # a committed checkpoint past step 0: training started
    recorded = run.config.read_text()
    markers = {s: stages.marker(run, s) for s in stages.STAGES}
    capsys.readouterr()
    code = cli.main(["prepare", "--config", _config_file(tmp_path, "y", [notes, memos]), "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("config error: data.sources: differ from") and "trained to step 10" in err
    code = cli.main(["prepare", "--run-dir", str(run), "data.min_chars=150", "tokenizer.model_type=unigram"])
    err = capsys.readouterr().err
    assert code == 2 and "data.min_chars, tokenizer.model_type: differ from" in err and "200 -> 150" in err
    assert run.config.read_text() == recorded and {s: stages.marker(run, s) for s in stages.STAGES} == markers
    # training-only changes are the training stage's to honour: accepted, and not recorded here
    cfg, _ = runconfig.resolve(None, ["train.steps=40", "optimizer.grad_clip=0", "data.curate_workers=2"], str(run))
    runconfig.record_for_data(cfg, run)
    assert cfg.train.steps == 40 and run.config.read_text() == recorded


def test_run_directory_without_its_config_is_not_guessed(tmp_path):
    run = RunDir(tmp_path / "old")
    (run.clean).mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"has data or checkpoints but no recorded config .*give --config"):
        runconfig.resolve(None, [], str(run))
    cfg, _ = runconfig.resolve(None, [], str(tmp_path / "new"))  # a new directory: the default preset
    assert cfg == load_config(runconfig.DEFAULT_PRESET)


@pytest.mark.parametrize("content,args,message", [
    ("", [], r"x.yaml: the file is empty; write the config sections there"),
    ("# only a comment\n", [], r"x.yaml: the file is empty"),
    ("[1, 2]\n", [], r"x.yaml: top level must be a mapping of config sections .* got list"),
    ("0\n", [], r"x.yaml: top level must be a mapping of config sections .* got int"),
    ("base: tiny\n", ["model.dtype=bfloat6"], r"model.dtype: 'bfloat6' is not a floating-point dtype; use float32"),
])
def test_bad_config_files_are_refused_in_one_line_before_work(tmp_path, capsys, content, args, message):
    (tmp_path / "x.yaml").write_text(content)
    code = cli.main(["run", "--config", str(tmp_path / "x.yaml"), "--run-dir", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("config error: ") and re.search(message, err), err
    assert not (tmp_path / "r").exists()


def test_a_config_path_without_yaml_suffix_says_so(tmp_path, capsys):
    (tmp_path / "conf.txt").write_text("base: tiny\n")
    assert cli.main(["prepare", "--config", str(tmp_path / "conf.txt"), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "the file exists but a config file must end in .yaml or .yml; rename it to conf.yaml" in err
    assert "no such preset" not in err


def test_missing_tokenizer_file_is_refused_before_work(tmp_path, corpus, capsys):
    notes, _ = corpus
    x = _config_file(tmp_path, "x", [notes])
    code = cli.main(["tokenizer", "--config", x, "--run-dir", str(tmp_path / "r"),
                     f"tokenizer.model_file={tmp_path}/nope.model"])
    err = capsys.readouterr().err
    assert code == 2 and f"tokenizer.model_file: {tmp_path}/nope.model does not exist" in err
    assert not (tmp_path / "r").exists()  # refused before curation, before the config is recorded


def test_disk_full_ends_in_one_line_and_a_traceback_log(tmp_path, corpus, capsys, monkeypatch):
    notes, _ = corpus
    run = RunDir(tmp_path / "run")

    def full(report, out_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "report.png"))

    monkeypatch.setattr(curation_report, "write", full)
    code = cli.main(["prepare", "--config", _config_file(tmp_path, "x", [notes]), "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {run.clean.parent / 'clean.partial' / 'report.png'}: No space left on device; "
                          "the disk is full: free space")
    log = err.rsplit("(traceback: ", 1)[1].rstrip(")\n")
    assert log.startswith(str(run.logs)) and "Traceback (most recent call last)" in open(log).read()
    assert stages.marker(run, "curation") is None


def test_expected_failures_are_found_inside_wrapped_errors():
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/data/run/tokenizer")
        except OSError:
            raise RuntimeError("PermissionError [while running 'Write']")
    except RuntimeError as e:
        assert expected_failure(e) == ("/data/run/tokenizer: Permission denied; fix the permissions, or use a path "
                                       "you can read and write.")
    assert expected_failure(ValueError("RESOURCE_EXHAUSTED: writing gs://b/ckpt/7: quota")).startswith(
        "RESOURCE_EXHAUSTED: writing gs://b/ckpt/7: quota; the disk is full")
    assert expected_failure(KeyError("train_stdlib_code")) is None  # a bug keeps its traceback


class _Stop(Exception):
    """Ends a command where the test has seen what it needs."""


def _count_calls(monkeypatch, targets) -> collections.Counter:
    calls = collections.Counter()
    for module, name in targets:
        original = getattr(module, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_a_command_resolves_and_checks_its_config_once(prepared_run, tmp_path, monkeypatch, command):
    """Issue 19: from the command line into `prepare` and into training, RUN/config.yaml is read once,
    the run check and the input checks run once."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(prepared_run, run.root)
    reads = []
    load_yaml = yamlconf.load_yaml
    monkeypatch.setattr(yamlconf, "load_yaml", lambda path, *a: reads.append(str(path)) or load_yaml(path, *a))
    calls = _count_calls(monkeypatch, [(runconfig, "resolve"), (runconfig, "_check"), (runconfig, "read_recorded"),
                                       (data_prepare, "check_inputs"), (data_prepare, "check_tokenizer_file")])
    if command == "train":  # up to the first step: resumed (none), recorded, then stopped
        monkeypatch.setattr(loop, "_Loop", lambda *a, **k: (_ for _ in ()).throw(_Stop()))
        with pytest.raises(_Stop):
            cli.main(["train", "--run-dir", str(run), "train.steps=2"])
    else:
        assert cli.main(["prepare", "--run-dir", str(run), "train.steps=2"]) == 0
    assert reads.count(str(run.config)) == 1, reads
    assert calls == {"resolve": 1, "_check": 1, "read_recorded": 1, "check_inputs": 1, "check_tokenizer_file": 1}
    assert runconfig.recorded(run).train.steps == 2  # recorded: the walk got there (train: into the loop)


def test_export_import_and_scaling_go_through_the_same_resolution(tmp_path, monkeypatch, capsys):
    seen = []

    def resolve(config, overrides, run_dir, **options):
        seen.append((config, list(overrides), str(run_dir), options))
        raise _Stop()

    monkeypatch.setattr(runconfig, "resolve", resolve)
    run, out = str(tmp_path / "run"), str(tmp_path / "out")
    for argv in (["export", "--run-dir", run, "--out", out, "model.dtype=float32"],
                 ["export", run, out, "model.dtype=float32"],  # the old spelling
                 ["import-hf", str(tmp_path / "hf"), "--run-dir", run, "--config", "tiny"],
                 ["scaling", "sweep", "--base-run", run, "--config", "tiny"],
                 ["scaling", "sweep", "--run-dir", run, "--config", "tiny"],  # the old name of --base-run
                 ["eval", run, "--step", "2"]):
        with pytest.raises(_Stop):
            cli.main(argv)
    assert seen == [
        (None, ["model.dtype=float32"], run, {"data": False, "require_recorded": True}),
        (None, ["model.dtype=float32"], run, {"data": False, "require_recorded": True}),
        ("tiny", [], run, {"data": False}),
        ("tiny", [], run, {"data": True, "default": "tiny"}),
        ("tiny", [], run, {"data": True, "default": "tiny"}),
        (None, [], run, {"data": False}),
    ]
