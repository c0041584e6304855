"""Simulated 8-device CPU mesh for every test: must be set before JAX is imported."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
    + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu may be installed (AOT tests); never probe for a TPU
# JAX's persistent compilation cache, one fresh directory per test session (inherited by every process the
# tests start): the suite compiles the same tiny programs in dozens of processes; this saves about a quarter
# of its time. Nothing carries over between sessions.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxtrain-tests-xla-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import pathlib  # noqa: E402

import pytest  # noqa: E402

from jaxtrain.config import load_config  # noqa: E402


def tiny_config(*overrides: str):
    return load_config("tiny", list(overrides))


@pytest.fixture(scope="session")
def prepared_run(tmp_path_factory) -> pathlib.Path:
    """A tiny run directory with cleaned corpus, tokenizer and token shards (no checkpoints)."""
    from jaxtrain import pipeline

    run_dir = tmp_path_factory.mktemp("prepared") / "run"
    pipeline.prepare(tiny_config(), run_dir)
    return run_dir


@pytest.fixture
def fresh_run(prepared_run, tmp_path) -> pathlib.Path:
    """A new run directory sharing the prepared data (copied), for training tests."""
    run_dir = tmp_path / "run"
    shutil.copytree(prepared_run / "data", run_dir / "data")
    shutil.copytree(prepared_run / "tokenizer", run_dir / "tokenizer")
    return run_dir
