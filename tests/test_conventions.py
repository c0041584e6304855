"""Conventions users bring: W&B logging, a profiler switch, quiet TFDS, one-line errors, complete packaging."""

import ast
import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from jaxtrain import cli, pipeline
from jaxtrain.config import save_config
from jaxtrain.data import prepare
from jaxtrain.rundir import RunDir

from conftest import tiny_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def observed_run(prepared_run, tmp_path_factory):
    """Four steps with W&B (offline, the real package) and a profiler trace of steps 2-3."""
    pytest.importorskip("wandb")
    run = tmp_path_factory.mktemp("observed") / "run"
    for part in ("data", "tokenizer"):
        shutil.copytree(prepared_run / part, run / part)
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_SILENT", "true")
    try:
        cfg = tiny_config("train.steps=4", "train.log_every=2", "eval.every_steps=4", "checkpoint.every_steps=4",
                          "eval.tasks=false", "log.wandb=true", "log.wandb_mode=offline", "log.wandb_project=jt-test",
                          "log.profile_steps=2", "log.profile_skip_steps=1")
        pipeline.train(cfg, run)
    finally:
        mp.undo()
    return run


def test_wandb_offline_run_gets_the_metrics_and_keeps_its_id(observed_run):
    run = RunDir(observed_run)
    run_id = run.wandb_run_id.read_text().strip()
    files = list((run.root / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    data = files[0].read_bytes()
    for key in (b"train/loss", b"train/grad_norm", b"eval/loss", b"jt-test"):
        assert key in data, key


def test_profiler_switch_writes_a_trace_for_tensorboard_and_perfetto(observed_run):
    traces = list((RunDir(observed_run).tensorboard / "plugins" / "profile").glob("*/*"))
    names = [p.name for p in traces]
    assert any(n.endswith(".xplane.pb") for n in names), names
    assert any(n.endswith(".trace.json.gz") for n in names), names
    assert all(pathlib.Path(p).stat().st_size > 0 for p in traces)


def test_the_docs_tensorboard_command_reads_the_runs_events(observed_run):
    """#24.3: `tensorboard --logdir RUN/tensorboard` (installed by the README's setup) finds the training scalars."""
    tensorboard = pathlib.Path(sys.executable).parent / "tensorboard"
    out = subprocess.run([str(tensorboard), "--inspect", "--logdir", str(RunDir(observed_run).tensorboard)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "scalars" in out.stdout and "last_step            4" in out.stdout, out.stdout[-2000:]


def test_tokenization_prints_no_tfds_download_lines(prepared_run, tmp_path, capfd):
    run = RunDir(tmp_path / "run")
    shutil.copytree(RunDir(prepared_run).clean, run.clean)
    shutil.copytree(RunDir(prepared_run).tokenizer_dir, run.tokenizer_dir)
    prepare.prepare_shards(tiny_config().data, run)
    out = capfd.readouterr()
    assert run.token_counts.exists() and "[tokenize]" in out.out
    assert "Downloading and preparing" not in out.out + out.err and "downloaded and prepared" not in out.out + out.err


def test_export_error_is_one_line_on_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    save_config(tiny_config("model.qk_norm=true"), RunDir(run).config)
    assert cli.main(["export", str(run), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model: Llama export") and "\n" not in err


def _imported_distributions() -> set[str]:
    """Distributions that jaxtrain's own code imports (module level or inside functions).

    A namespace package (``google``) is shared by many distributions; the one meant is the one whose
    files hold the imported subpackage (``google.protobuf`` -> protobuf, not googleapis-common-protos).
    """
    modules = set()
    for path in (ROOT / "jaxtrain").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules.add(node.module)
    modules = {m for m in modules if m.split(".")[0] not in set(sys.stdlib_module_names) | {"jaxtrain"}}
    by_module = importlib.metadata.packages_distributions()
    found = set()
    for module in modules:
        candidates = by_module[module.split(".")[0]]
        if len(candidates) > 1 and "." in module:
            prefix = "/".join(module.split(".")[:2])
            candidates = [d for d in candidates
                          if any(str(f).startswith(prefix) for f in importlib.metadata.files(d) or ())]
        found |= {_norm(d) for d in candidates}
    return found


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement: str) -> str:
    return _norm(re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0])


def test_pyproject_declares_everything_jaxtrain_imports_and_requirements_pin_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    assert {"tpu", "gcp", "test", "wandb"} <= set(extras)
    declared = core | set().union(*extras.values())
    missing = _imported_distributions() - declared
    assert not missing, f"imported but not in pyproject.toml: {sorted(missing)}"
    assert {"apache-beam", "pyarrow", "tokenizers", "sentencepiece"} <= core
    pins = {}
    for name in ("requirements.txt", "requirements-test.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if "==" in line:
                pins[_name(line)] = line.split("==")[1].strip()
    unpinned = (core | extras["test"]) - set(pins)
    assert not unpinned, f"in pyproject.toml but not pinned in requirements*.txt: {sorted(unpinned)}"
    for name, version in pins.items():  # the pinned environment is the one the tests run in
        if name in core | extras["test"]:
            assert importlib.metadata.version(name).split("+")[0] == version, name  # torch: 2.13.0+cpu
