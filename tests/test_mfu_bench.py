"""benchmarks/mfu.py at tiny size on CPU: both frameworks run, the same shape, every figure written."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(tmp_path, *extra) -> dict:
    out = tmp_path / "mfu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mfu.py"), "--tiny", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "jaxtrain / PyTorch tokens/s" in proc.stdout
    return json.loads(out.read_text())


def _check(figures: dict) -> None:
    jax_r, torch_r = figures["jax"], figures["torch"]
    assert jax_r["params"] == torch_r["params"] > 0  # the peer has exactly the same shape
    assert jax_r["flops_per_token"] == torch_r["flops_per_token"] > 0
    for r in (jax_r, torch_r):
        assert len(r["step_times_s"]) == figures["steps"] and r["tokens_per_s"] > 0
        assert r["mfu"] is None  # no published peak for a CPU
        assert all(abs(loss - math.log(figures["shape"]["vocab_size"])) < 0.5 for loss in r["losses"])  # random tokens
    assert jax_r["attention"] == "xla"  # auto on CPU; flash on GPU
    assert figures["ratio_tokens_per_s_jax_over_torch"] == pytest.approx(jax_r["tokens_per_s"] / torch_r["tokens_per_s"])


@pytest.mark.slow  # 18 s: the benchmark is run by hand (BENCHMARKS.md); the layers and conventions tests read it
def test_mfu_benchmark_runs_both_frameworks_at_tiny_size(tmp_path):
    figures = _run(tmp_path, "--no-torch-compile")
    _check(figures)
    assert figures["torch"]["torch_compile"] is False and figures["torch"]["fused_adamw"] is True


@pytest.mark.slow
def test_mfu_benchmark_with_torch_compile(tmp_path):
    """As the GPU run does it (torch.compile takes minutes on 2 CPU cores)."""
    figures = _run(tmp_path)
    _check(figures)
    assert figures["torch"]["torch_compile"] is True


@pytest.mark.slow  # 15 s; the benchmark itself is run by hand (BENCHMARKS.md)
def test_loop_overhead_benchmark_measures_every_part(prepared_run):
    import importlib.util

    spec = importlib.util.spec_from_file_location("loop_overhead", ROOT / "benchmarks" / "loop_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.measure(prepared_run, steps=6, overrides=["train.log_every=3"])
    for key in ("data_ms", "to_global_ms", "bare_synced_ms", "bare_async_ms", "loop_ms"):
        assert figures[key] > 0, key
    assert figures["loop_over_bare"] == pytest.approx(figures["loop_ms"] / figures["bare_synced_ms"])
