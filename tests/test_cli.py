import os
import subprocess
import sys

import pytest

from jaxtrain import cli


def _jaxtrain(*args, cwd=None):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "jaxtrain.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.mark.parametrize("command", ["run", "prepare", "tokenizer", "tokenize", "train", "eval", "sample", "compile"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "key=value" in out


def test_bad_override_is_refused_before_any_work(tmp_path, capsys):
    code = cli.main(["run", "--config", "tiny", "--run-dir", str(tmp_path / "r"), "model.num_layer=2"])
    assert code == 2
    assert "model.num_layer: unknown key. Did you mean model.num_layers?" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_whole_pipeline_then_resume_eval_and_sample(tmp_path):
    run_dir = tmp_path / "run"
    common = ["--run-dir", str(run_dir)]
    result = _jaxtrain("run", "--config", "tiny", *common, "train.steps=12", "checkpoint.every_steps=6")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "[prepare] stdlib_code:" in out and "[tokenize]" in out and "compiled train step" in out
    assert "step     12/12" in out and "tok/s/chip" in out and "MFU n/a" in out and "eta" in out
    assert "held-out loss" in out and "unigram baseline" in out and "--- sample" in out
    for path in ("config.yaml", "tokenizer/tokenizer.model", "metrics.jsonl", "data/clean/report.json",
                 "checkpoints/12", "checkpoints/6"):
        assert (run_dir / path).exists(), path

    # extending a finished cosine run keeps its curve explicitly (the rate stays at its floor past step 12)
    again = _jaxtrain("train", *common, "train.steps=14", "optimizer.decay_steps=12")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint step 12" in again.stdout and "step     14/14" in again.stdout

    evaluated = _jaxtrain("eval", *common, "--step", "12")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "[eval] step 12: eval loss" in evaluated.stdout

    sampled = _jaxtrain("sample", *common, "--prompt", "import ", "--prompt", "The ", "--tokens", "8")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert sampled.stdout.count("--- sample (step 14") == 2

    refused = _jaxtrain("prepare", *common, "data.min_chars=150")  # the model learned from the recorded data
    last = refused.stderr.strip().splitlines()[-1]  # (libraries may log warnings on import before it)
    assert refused.returncode == 2 and last.startswith("config error: data.min_chars: differ from"), refused.stderr
    assert "trained to step 14" in last


@pytest.mark.parametrize("command", ["run", "prepare", "tokenizer", "tokenize", "train", "eval", "sample", "compile",
                                     "export", "import-hf", "scaling"])
def test_help_names_a_run_one_way(command, capsys):
    """Issue 19: `--run-dir RUN` for every command (scaling's base run: `--base-run RUN`); the old
    spellings are not advertised."""
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert ("--base-run RUN" if command == "scaling" else "--run-dir RUN") in out
    assert "[RUN]" not in out and "--run-dir RUN_DIR" not in out and (command != "scaling" or "--run-dir" not in out)
    assert command != "export" or "--out OUT" in out


def test_old_spellings_still_work_and_name_the_new_form(tmp_path, monkeypatch, capsys):
    from jaxtrain.config import load_config, save_config
    from jaxtrain.export import handoff
    from jaxtrain.rundir import RunDir

    run, out = tmp_path / "run", tmp_path / "out"
    save_config(load_config("tiny", ["model.num_layers=3"]), RunDir(run).config)
    exported = []
    monkeypatch.setattr(handoff, "export_run", lambda cfg, run, out, step: exported.append((cfg, run, out)) or out)
    assert cli.main(["export", str(run), str(out)]) == 0
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"note: `jaxtrain export {run} {out}` is deprecated; use "
                                            f"`jaxtrain export --run-dir {run} --out {out}`")
    assert cli.main(["export", "--run-dir", str(run), "--out", str(out)]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert [(c.model.num_layers, str(r), str(o)) for c, r, o in exported] == [(3, str(run), str(out))] * 2
    assert cli.main(["export", "--run-dir", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no recorded config" in capsys.readouterr().err
