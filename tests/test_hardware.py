"""One accelerator table (jaxtrain.hardware); tpu_scripts keeps a stdlib-only copy that must agree."""

import sys

import pytest

from jaxtrain import hardware
from jaxtrain.scaling import flops
from jaxtrain.train.aot import topology_name

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "tpu_scripts"))
import tpu_commands  # noqa: E402


def test_tpu_scripts_copy_agrees_with_the_table():
    assert set(tpu_commands.RUNTIME_VERSION) == {c.type_prefix for c in hardware.TPUS.values()}
    assert {v: k for k, v in tpu_commands.ALIASES.items()} == hardware.TYPE_ALIASES
    for prefix, sizes in tpu_commands.VALID_SIZES.items():
        for size in sizes:
            acc = tpu_commands.parse_accelerator(f"{prefix}-{size}")
            chip, chips = hardware.parse_accelerator_type(acc.type)
            assert chip.hosts(chips) == acc.hosts, (acc.type, chip.hosts(chips), acc.hosts)


@pytest.mark.parametrize("kind, peak", [("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12),
                                        ("TPU v4", 275e12), ("NVIDIA H100 80GB HBM3", 989e12), ("cpu", None)])
def test_peaks_by_device_kind(kind, peak):
    assert flops.peak_flops(kind) == peak


def test_one_spelling_of_v5e():
    # v5e is sold as v5litepod-N; both spellings name the same chip everywhere
    assert topology_name("v5litepod-16") == topology_name("v5e-16") == ("v5e", "v5e:4x4")
    assert hardware.parse_accelerator_type("v5litepod-16")[0] is hardware.TPUS["v5e"]
    assert hardware.TPUS["v5e"].hbm_bytes == 16 * 2**30


def test_tpu_overlap_flags_go_to_libtpu_unless_the_user_set_them(monkeypatch):
    from jaxtrain import hardware

    monkeypatch.setattr(hardware, "looks_like_tpu_host", lambda: True)
    env: dict = {}
    assert hardware.apply_tpu_overlap_flags(env)
    assert env["LIBTPU_INIT_ARGS"].split() == list(hardware.TPU_OVERLAP_FLAGS)
    assert "--xla_tpu_enable_data_parallel_all_reduce_opt=true" in env["LIBTPU_INIT_ARGS"]  # DCN all-reduce overlap
    mine = {"LIBTPU_INIT_ARGS": "--xla_tpu_scoped_vmem_limit_kib=98304"}
    assert not hardware.apply_tpu_overlap_flags(mine)
    assert mine == {"LIBTPU_INIT_ARGS": "--xla_tpu_scoped_vmem_limit_kib=98304"}
    monkeypatch.setattr(hardware, "looks_like_tpu_host", lambda: False)
    cpu: dict = {}
    assert not hardware.apply_tpu_overlap_flags(cpu) and cpu == {}  # a CPU or GPU host: nothing set
    assert hardware.apply_tpu_overlap_flags(cpu, force=True) and "LIBTPU_INIT_ARGS" in cpu  # `jaxtrain compile`
