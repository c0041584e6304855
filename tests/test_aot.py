"""AOT compilation for TPU topologies from this CPU machine (needs libtpu: the [tpu] extra)."""

import importlib.util

import pytest

from jaxtrain.config import ConfigError, load_config
from jaxtrain.train.aot import compile_for_topology, topology_name


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
