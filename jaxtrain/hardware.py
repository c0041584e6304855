"""The accelerator table, named once: peak FLOP/s, HBM, and how Cloud TPU types count chips and hosts.

`scaling.flops` (MFU), `train.compile` (will it fit?) and the command line read
this table. `tpu_scripts/tpu_commands.py` is standard-library only and keeps
its own copy of the naming facts; `tests/test_hardware.py` checks that the two agree.

Peaks are dense bf16 per chip (see shared REFERENCE; the H100/H200 datasheet's
1979 TFLOP/s assumes sparsity). HBM per chip from the Cloud TPU and NVIDIA
system pages.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # generation as jaxtrain spells it: v4, v5e, v5p, v6e, h100
    device_kinds: tuple[str, ...]  # jax Device.device_kind strings (exact for TPUs, substrings for GPUs)
    peak_flops: float  # dense bf16 FLOP/s per chip
    hbm_bytes: int
    type_prefix: str = ""  # Cloud accelerator-type prefix (v5e is sold as v5litepod-N)
    cores_per_chip: int = 1  # accelerator-type sizes count TensorCores for v2-v4 and v5p (v5p-128 = 64 chips)
    chips_per_host: int = 4
    single_host_chips: int = 4  # slices up to this many chips are one host (v5e-8 and v6e-8 are one VM)

    def chips(self, type_size: int) -> int:
        return type_size // self.cores_per_chip

    def hosts(self, n_chips: int) -> int:
        return 1 if n_chips <= self.single_host_chips else n_chips // self.chips_per_host


TPUS: dict[str, Chip] = {
    "v2": Chip("v2", ("TPU v2",), 45e12, 16 * GiB, "v2", cores_per_chip=2),
    "v3": Chip("v3", ("TPU v3",), 123e12, 32 * GiB, "v3", cores_per_chip=2),
    "v4": Chip("v4", ("TPU v4",), 275e12, 32 * GiB, "v4", cores_per_chip=2),
    "v5e": Chip("v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 16 * GiB, "v5litepod", single_host_chips=8),
    "v5p": Chip("v5p", ("TPU v5", "TPU v5p"), 459e12, 95 * GiB, "v5p", cores_per_chip=2),
    "v6e": Chip("v6e", ("TPU v6 lite", "TPU v6e"), 918e12, 32 * GiB, "v6e", single_host_chips=8),
}
GPUS: dict[str, Chip] = {
    "h100": Chip("h100", ("H100",), 989e12, 80 * GiB),
    "h200": Chip("h200", ("H200",), 989e12, 141 * 10**9),
}
CHIPS: dict[str, Chip] = {**TPUS, **GPUS}
# MFU assumed when projecting tokens/s from FLOPs (`jaxtrain compile --mfu`): MaxText's published
# dense results on TPU are 45-71% (Llama 3.1 8B on v6e-256: 45.5%), so 45% is reachable, not best case.
ASSUMED_MFU = 0.45
# Accelerator-type prefixes that are not generation names: v5litepod-16 is v5e.
TYPE_ALIASES = {c.type_prefix: c.name for c in TPUS.values() if c.type_prefix != c.name}


def chip_for_device_kind(device_kind: str) -> Chip | None:
    """The chip behind a jax device, or None (a CPU, or a device this table does not know)."""
    for chip in TPUS.values():
        if device_kind in chip.device_kinds:
            return chip
    for chip in GPUS.values():
        if any(marker in device_kind for marker in chip.device_kinds):
            return chip
    return None


def peak_flops(device_kind: str) -> float | None:
    chip = chip_for_device_kind(device_kind)
    return chip.peak_flops if chip else None


def parse_accelerator_type(accelerator: str) -> tuple[Chip, int] | None:
    """'v5p-128' -> (v5p, 64 chips); 'v5litepod-16' -> (v5e, 16); None if not of that form."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator)
    if not match:
        return None
    name = TYPE_ALIASES.get(match.group(1), match.group(1))
    chip = TPUS.get(name)
    return (chip, chip.chips(int(match.group(2)))) if chip else None


# XLA flags that overlap TPU collectives with compute, as MaxText passes them in LIBTPU_INIT_ARGS
# (benchmarks/xla_flags_library.py there): CF_FOR_ALL_GATHER (FSDP's all-gathers run asynchronously,
# fused into the compute that follows, over several steps) and DATA_PARALLEL_OVERLAP (data-parallel
# all-reduces, the ones that cross slices over DCN, are optimized and pipelined across iterations).
TPU_OVERLAP_FLAGS = (
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
    "--xla_tpu_enable_data_parallel_all_reduce_opt=true",
    "--xla_tpu_data_parallel_opt_different_sized_ops=true",
)


def looks_like_tpu_host() -> bool:
    """A Cloud TPU VM, judged without importing JAX: TPU device files (v4: /dev/accel*, v5e/v5p/v6e: VFIO)."""
    return bool(os.environ.get("TPU_ACCELERATOR_TYPE") or glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def apply_tpu_overlap_flags(environ: dict | None = None, force: bool = False) -> bool:
    """Put TPU_OVERLAP_FLAGS in LIBTPU_INIT_ARGS (before JAX is imported) on a TPU host, or always with force.

    A LIBTPU_INIT_ARGS the user set is left exactly as it is. Returns whether the flags were set.
    """
    environ = os.environ if environ is None else environ
    if "LIBTPU_INIT_ARGS" in environ or not (force or looks_like_tpu_host()):
        return False
    environ["LIBTPU_INIT_ARGS"] = " ".join(TPU_OVERLAP_FLAGS)
    return True


# libtpu loaded on a machine that is not a TPU VM (AOT compilation for a topology) looks for the VM's metadata
# and prints warnings and an INVALID_ARGUMENT line about worker hostnames; these say "one local host, no
# metadata server" and change nothing in what is compiled (the topology is described explicitly). Without a TPU
# there is no device to guard, so two compiles at once need not refuse each other over libtpu's lock file.
OFF_TPU_LIBTPU_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0",
                      "TPU_HOST_BOUNDS": "1,1,1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def quiet_libtpu_off_tpu(environ: dict | None = None) -> bool:
    """Set OFF_TPU_LIBTPU_ENV (before JAX is imported) where this is not a TPU host; values already set are kept."""
    environ = os.environ if environ is None else environ
    if looks_like_tpu_host():
        return False
    for key, value in OFF_TPU_LIBTPU_ENV.items():
        environ.setdefault(key, value)
    return True
