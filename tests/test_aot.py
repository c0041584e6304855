"""AOT compilation for TPU topologies from this CPU machine (needs libtpu: the [tpu] extra)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from jaxtrain.config import ConfigError, load_config
from jaxtrain.train.aot import HBM_HEADROOM, CompileReport, compile_for_topology, topology_name


@pytest.mark.parametrize(
    "accelerator, expected",
    [
        ("v5e-8", ("v5e", "v5e:2x4")),
        ("v5e-256", ("v5e", "v5e:16x16")),
        ("v6e-16", ("v6e", "v6e:4x4")),
        ("v5p-8", ("v5p", "v5p:2x2x1")),
        ("v5p-128", ("v5p", "v5p:4x4x4")),
        ("v4-32", ("v4", "v4:2x2x4")),
        ("v4-64", ("v4", "v4:2x4x4")),
        ("v5e:2x2", ("v5e", "v5e:2x2")),
    ],
)
def test_accelerator_types_map_to_topologies(accelerator, expected):
    gen, name = topology_name(accelerator)
    assert (gen, name) == expected


def test_bad_topology_names_the_flag():
    with pytest.raises(ConfigError, match="--topology 'v9-8'"):
        topology_name("v9-8")


def test_fits_means_five_percent_of_hbm_spare_and_tokens_are_projected_from_flops():
    hbm = 16 * 2**30

    def report(used):
        return CompileReport("v5e:2x4", "TPU v5 lite", 8, hbm, used, 0, 0, 0.0, 1e15, 1.0, attention="splash",
                             flops_per_token=7.6e9, peak_flops_per_chip=197e12, assumed_mfu=0.5)

    assert HBM_HEADROOM == 0.05
    assert report(int(0.94 * hbm)).fits
    assert not report(int(0.96 * hbm)).fits  # the old table's "fits with 0.01 GiB spare" is not a fit
    assert not report(hbm - 2**20).fits and "DOES NOT FIT (needs 5% of HBM spare)" in report(hbm - 2**20).render()
    assert report(0).projected_tokens_per_s_per_chip == pytest.approx(0.5 * 197e12 / 7.6e9)
    assert "12,961 tokens/s per chip at an assumed 50% MFU" in report(0).render()


needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed; `pip install -e '.[tpu]'` (python3 dev.py test installs it) to run the AOT check",
)


@needs_libtpu
def test_auto_attention_compiles_splash_kernels_for_the_tpu_target():
    cfg = load_config("tiny", ["train.batch_size=8", "data.seq_len=128", "model.max_seq_len=128"])
    assert cfg.model.attention == "auto"
    report = compile_for_topology(cfg, "v5e:2x2", assumed_mfu=0.4)
    assert report.attention == "splash" and report.pallas_kernels >= 3  # forward, dq and dkv kernels
    assert report.fits and report.projected_tokens_per_s_per_chip == pytest.approx(
        0.4 * 197e12 * report.num_chips * cfg.train.batch_size * cfg.data.seq_len
        / report.model_flops_per_step / report.num_chips)
    with pytest.raises(ConfigError, match="data.seq_len: 64 must be a multiple of 128"):
        compile_for_topology(load_config("tiny"), "v5e:2x2")  # auto -> splash on TPU: refused before compiling


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed; `pip install -e '.[tpu]'` (python3 dev.py test installs it) to run the AOT check",
)
def test_tiny_model_compiles_for_v5e_2x2_with_memory_report():
    cfg = load_config("tiny", ["model.attention=xla", "train.batch_size=8"])
    report = compile_for_topology(cfg, "v5e:2x2")
    assert report.num_chips == 4 and report.device_kind == "TPU v5 lite"
    assert report.hbm_per_chip == 16 * 2**30 and report.fits
    assert 0 < report.arguments_bytes < report.bytes_per_chip < 2**30
    assert report.model_flops_per_step > 0 and report.compiler_flops_per_chip > 0
    bigger = compile_for_topology(load_config("tiny", ["model.attention=xla", "train.batch_size=64"]), "v5e:2x2")
    assert bigger.bytes_per_chip > report.bytes_per_chip  # a bigger batch needs more HBM per chip
    assert "fits" in report.render()


@needs_libtpu
def test_cli_compile_runs_libtpu_with_the_collective_overlap_flags():
    """`jaxtrain compile` sets hardware.TPU_OVERLAP_FLAGS in LIBTPU_INIT_ARGS: libtpu must accept every one."""
    env = {k: v for k, v in os.environ.items() if k != "LIBTPU_INIT_ARGS"}
    env.update(JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")  # this pytest process may hold libtpu already
    proc = subprocess.run(
        [sys.executable, "-c", "import os, sys; from jaxtrain.cli import main; code = main(sys.argv[1:]); "
         "print('LIBTPU_INIT_ARGS=' + os.environ.get('LIBTPU_INIT_ARGS', '')); sys.exit(code)",
         "compile", "--config", "tiny", "--topology", "v5e:2x2", "train.batch_size=8", "data.seq_len=128",
         "model.max_seq_len=128"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "-> fits" in proc.stdout and "attention       splash" in proc.stdout
    assert "--xla_tpu_enable_async_collective_fusion=true" in proc.stdout
    assert "unexpected worker hostname" not in proc.stderr and "host bounds" not in proc.stderr  # #24.6: no noise
