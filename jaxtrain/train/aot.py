"""Ahead-of-time compilation of the real train step for a TPU topology, from any machine.

With libtpu installed (`pip install -e .[tpu]`), `jax.experimental.topologies`
describes a slice's devices without owning one; the train step is lowered
with abstract (shape-only) state and batch on a mesh of those devices and
compiled by the TPU compiler, with the attention kernel the slice would run
(`auto` resolves for the target: splash). The report says whether it fits in
HBM with HBM_HEADROOM to spare, how many FLOPs a step costs and the tokens/s
per chip an assumed MFU would give, before anyone rents the slice.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import time

import jax
import jax.numpy as jnp
from jax.experimental import topologies

from jaxtrain import hardware
from jaxtrain.config import RunConfig
from jaxtrain.errors import ConfigError, JaxtrainError
from jaxtrain.models import attention
from jaxtrain.scaling import flops
from jaxtrain.train.trainer import build_trainer

AOT_GENERATIONS = ("v4", "v5e", "v5p", "v6e")  # the TPU generations libtpu describes for AOT compilation
# "Fits" leaves this fraction of HBM spare: the runtime, fragmentation and the checkpoint's device-to-host
# copies need room that the compiler's static count does not see (a 0.01 GiB margin is not a fit).
HBM_HEADROOM = 0.05


def topology_name(accelerator: str) -> tuple[str, str]:
    """'v5p-128' -> ('v5p', 'v5p:4x4x4'); 'v5e:2x4' passes through. Raises ConfigError on unknown names."""
    explicit = re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})", accelerator)
    if explicit:
        return explicit.group(1), accelerator
    parsed = hardware.parse_accelerator_type(accelerator)
    if parsed is None or parsed[0].name not in AOT_GENERATIONS:
        raise ConfigError(
            f"--topology {accelerator!r}: expected an accelerator type like v5e-8, v5p-128, v4-32, v6e-16 "
            "or an explicit topology like v5e:2x4."
        )
    gen, chips = parsed[0].name, parsed[1]
    if chips < 1 or chips & (chips - 1):
        raise ConfigError(f"--topology {accelerator!r}: {chips} chips is not a power of two.")
    if gen in ("v4", "v5p"):  # 3D torus from 2x2x1: double the smallest axis, the last one on ties
        dims = [2, 2, 1] if chips >= 4 else [chips, 1, 1]
        while math.prod(dims) < chips:
            dims[max(i for i in range(3) if dims[i] == min(dims))] *= 2
        return gen, f"{gen}:{'x'.join(map(str, dims))}"
    x = 1 << (int(math.log2(chips)) // 2)
    return gen, f"{gen}:{x}x{chips // x}"


@dataclasses.dataclass
class CompileReport:
    topology: str
    device_kind: str
    num_chips: int
    hbm_per_chip: int
    bytes_per_chip: int
    arguments_bytes: int
    temp_bytes: int
    compiler_flops_per_chip: float
    model_flops_per_step: float
    compile_seconds: float
    attention: str = "xla"  # the kernel the step was compiled with (what `auto` resolves to on the target)
    pallas_kernels: int = 0  # Mosaic custom calls in the compiled program (splash forward and backward)
    flops_per_token: float = 0.0  # model FLOPs, 6N + causal attention
    peak_flops_per_chip: float = 0.0
    assumed_mfu: float = hardware.ASSUMED_MFU
    compiler_error: str | None = None  # the TPU compiler refused the program (out of HBM)

    @property
    def fits(self) -> bool:
        return self.compiler_error is None and self.bytes_per_chip <= (1 - HBM_HEADROOM) * self.hbm_per_chip

    @property
    def spare_bytes(self) -> int:
        return self.hbm_per_chip - self.bytes_per_chip

    @property
    def projected_tokens_per_s_per_chip(self) -> float:
        """Tokens/s per chip if the step ran at the assumed MFU: MFU x peak / FLOPs per token."""
        return self.assumed_mfu * self.peak_flops_per_chip / self.flops_per_token if self.flops_per_token else 0.0

    def render(self) -> str:
        return "\n".join(
            [
                f"topology        {self.topology} ({self.num_chips} x {self.device_kind})",
                f"HBM per chip    {_size(self.bytes_per_chip)} of {_size(self.hbm_per_chip)} "
                f"({self.bytes_per_chip / self.hbm_per_chip:.1%}, "
                + (f"{_size(self.spare_bytes)} spare) -> " if self.spare_bytes >= 0 else
                   f"{_size(-self.spare_bytes)} over) -> ")
                + ("fits" if self.fits else f"DOES NOT FIT (needs {HBM_HEADROOM:.0%} of HBM spare)"),
                f"  state+batch   {_size(self.arguments_bytes)}   temporaries {_size(self.temp_bytes)}",
                f"attention       {self.attention} ("
                + (f"{self.pallas_kernels} Pallas kernel calls in the program)" if self.compiler_error is None
                   else "Pallas kernel calls not known: the program did not compile)"),
                f"FLOPs per step  {self.model_flops_per_step:.3e} (model, 6N + causal attention)",
                "                compiler: " + (f"{self.compiler_flops_per_chip:.3e} per chip (a scanned layer counted once)"
                                                if self.compiler_error is None else "n/a (the program did not compile)"),
                f"projected       {self.projected_tokens_per_s_per_chip:,.0f} tokens/s per chip at an assumed "
                f"{self.assumed_mfu:.0%} MFU ({self.peak_flops_per_chip / 1e12:.0f} TFLOP/s peak)",
                f"compile time    {self.compile_seconds:.1f}s",
            ]
            + ([f"compiler        {self.compiler_error}"] if self.compiler_error else [])
        )


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def compile_for_topology(cfg: RunConfig, accelerator: str, num_slices: int = 1,
                         assumed_mfu: float = hardware.ASSUMED_MFU) -> CompileReport:
    gen, name = topology_name(accelerator)
    if not 0 < assumed_mfu <= 1:
        raise ConfigError(f"--mfu: must be in (0, 1], got {assumed_mfu:g} (MaxText's published dense TPU results are "
                          "0.45-0.71).")
    kwargs = {"chip_config_name": "megacore"} if gen in ("v4", "v5p") else {}
    if num_slices > 1:
        kwargs["num_slices"] = num_slices
    try:
        devices = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs).devices
    except Exception as e:  # libtpu missing, held by another process, or the topology unknown to it
        if importlib.util.find_spec("libtpu") is None:
            raise JaxtrainError(f"--topology {accelerator}: AOT compilation needs libtpu, the TPU compiler: "
                                "pip install -e '.[tpu]' (python3 dev.py test installs it).") from e
        if "lockfile" in str(e):
            raise JaxtrainError(f"--topology {accelerator}: another process holds libtpu (a TPU job or another "
                                "compile); wait for it, or set ALLOW_MULTIPLE_LIBTPU_LOAD=1 if no TPU is in use.") from e
        raise JaxtrainError(f"--topology {accelerator}: libtpu cannot describe {name}: {str(e).splitlines()[0]}") from e
    trainer = build_trainer(cfg, "/nonexistent-aot-run", devices=list(devices))  # nothing is read or written
    batch = trainer.abstract_batch()
    abstract_state = trainer.abstract_state()
    arguments = _per_device_bytes(abstract_state) + _per_device_bytes(batch)
    start = time.perf_counter()
    error = None
    try:
        compiled = trainer.train_step.lower(abstract_state, batch).compile()
    except Exception as e:  # XLA reports an over-HBM program as RESOURCE_EXHAUSTED
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        error = str(e).strip().splitlines()[0]
    seconds = time.perf_counter() - start
    if error is None:
        mem = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        temp = mem.temp_size_in_bytes
        used = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + temp
        used += mem.generated_code_size_in_bytes
        compiler_flops = float(cost.get("flops", 0.0))
        kernels = compiled.as_text().count("custom_call_target=\"tpu_custom_call\"")
    else:
        match = re.search(r"temporaries \(([\d.]+)G\)", error)
        temp = int(float(match.group(1)) * 2**30) if match else 0
        used, compiler_flops, kernels = arguments + temp, 0.0, 0
    per_token = flops.flops_per_token(cfg.model, trainer.seq_len)
    return CompileReport(
        topology=name if num_slices == 1 else f"{num_slices} x {name}",
        device_kind=devices[0].device_kind,
        num_chips=len(devices),
        hbm_per_chip=hardware.TPUS[gen].hbm_bytes,
        bytes_per_chip=int(used),
        arguments_bytes=int(arguments),
        temp_bytes=int(temp),
        compiler_flops_per_chip=compiler_flops,
        model_flops_per_step=per_token * cfg.tokens_per_step,
        compile_seconds=seconds,
        attention=attention.resolve(cfg.model.attention, devices[0].platform),
        pallas_kernels=kernels,
        flops_per_token=per_token,
        peak_flops_per_chip=hardware.TPUS[gen].peak_flops,
        assumed_mfu=assumed_mfu,
        compiler_error=error,
    )


def _per_device_bytes(tree) -> int:
    """Bytes of one device's shards of an abstract, sharded pytree."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total
