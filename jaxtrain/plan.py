"""`jaxtrain plan`: from a budget and a TPU topology to a config that fits and a projection of what it costs.

    jaxtrain plan --flops 1e21 --topology v5p-8 [--config llama-1b] [--out plan-v5p-8.yaml] [--mfu 0.45]
    jaxtrain plan --chip-hours 2000 --topology v5p-8     a budget in hours of that slice's chips at --mfu
    jaxtrain plan --tokens 5e10 --topology v5e-16        a token budget: the model is sized for it

1. Compute C (FLOPs) from the budget.
2. Model: the compute-optimal parameters N and tokens D for C from the scaling law (`laws.compute_optimal`:
   Epoch AI's refit of Chinchilla, or `--constants` from `jaxtrain scaling fit`), then the Llama-shaped model
   (`model_shape`) whose matmul parameters (`flops.matmul_params`, the 6N of the FLOP count) are closest to N.
   A budget outside the range the law was fitted on is said so.
3. Global batch and peak learning rate from DeepSeek LLM's fitted rules (Bi et al. 2024, arXiv 2401.02954,
   eq. 1: B_opt = 0.2920 C^0.3271 tokens, eta_opt = 0.3118 C^-0.1250), fitted on their data and AdamW setup;
   the batch is rounded to a power of two of sequences, at least one per chip. Steps = D / tokens per step.
4. Mesh: FSDP over every chip (MaxText's default for a single slice).
5. Memory: remat policy and microbatches, searched by AOT compilation of the real train step against the
   topology (`train.aot`): candidates in order of cost (no remat with microbatches down to MIN_ROWS_NO_REMAT
   rows per chip, then full remat), an analytic estimate (`estimate_bytes`) ordering the search so the
   first compile is usually the last, until one fits with HBM_HEADROOM of HBM spare.

The plan is written as YAML (`base:` the preset, the sections it sets, a comment on each value's source) and
printed with the projected step time and tokens/s at the stated MFU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Callable, Iterator

from jaxtrain import hardware
from jaxtrain.config import CONFIG_DIR, RunConfig, load_config
from jaxtrain.errors import ConfigError
from jaxtrain.scaling import laws
from jaxtrain.scaling.flops import flops_per_token, matmul_params
from jaxtrain.train import aot

HEAD_DIM = 128  # Llama 3, Mistral, DeepSeek: 128-wide heads at every size above 1B
WIDTH_PER_LAYER = 128  # d_model / layers: Llama 3 8B 128, 70B 102; Kaplan et al. found loss flat for 50-200
GQA_KV_HEADS = 8  # Llama 3: 8 key-value heads at every size
# DeepSeek LLM's fitted rules (eq. 1): batch in tokens and peak learning rate from compute C in FLOPs.
BATCH_RULE = (0.2920, 0.3271)
LR_RULE = (0.3118, -0.1250)
WARMUP_STEPS = 2000  # DeepSeek LLM's warmup; a tenth of the run when the run is shorter than 20,000 steps
# The compute Epoch AI's Chinchilla refit rests on: Hoffmann et al.'s IsoFLOP profiles start at 6e18 FLOPs
# and Chinchilla itself used 5.76e23.
EPOCH_AI_RANGE = (6e18, 5.76e23)
EXTRAPOLATION_FACTOR = 10.0  # a budget more than 10x outside the fitted range is called an extrapolation
MIN_ROWS_NO_REMAT = 4  # below 4 rows per chip per microbatch FSDP's per-microbatch weight gathers dominate
# Korthikanti et al. 2022 (Reducing Activation Recomputation, table 2): 34 d bytes per token and layer of
# bf16 activations without recomputation, attention scores excluded (splash/flash never store them).
ACTIVATION_BYTES_PER_TOKEN_DIM = 34
ESTIMATE_MARGIN = 0.85  # start the search at the first candidate estimated to use at most 85% of HBM


@dataclasses.dataclass
class Plan:
    cfg: RunConfig
    topology: str
    chips: int
    chip: hardware.Chip
    flops: float
    law: laws.Plan
    budget_text: str
    notes: list[str]
    mfu: float
    constants_source: str = "Epoch AI's refit of Chinchilla"
    compiled: list[tuple[str, int, "aot.CompileReport | None"]] = dataclasses.field(default_factory=list)

    @property
    def fits(self) -> bool | None:
        """True/False from the last compile, None when nothing was compiled."""
        return self.compiled[-1][2].fits if self.compiled and self.compiled[-1][2] else None

    @property
    def step_seconds(self) -> float:
        flops_per_step = flops_per_token(self.cfg.model, self.cfg.data.seq_len) * self.cfg.tokens_per_step
        return flops_per_step / (self.chips * self.chip.peak_flops * self.mfu)


def slice_chips(topology: str) -> tuple[hardware.Chip, int]:
    """The chip and chip count of an accelerator type or explicit topology (v5p-8, v5e:2x4)."""
    gen, name = aot.topology_name(topology)
    return hardware.TPUS[gen], math.prod(int(x) for x in name.split(":")[1].split("x"))


def budget_flops(flops: float | None, chip_hours: float | None, tokens: float | None, chip: hardware.Chip,
                 mfu: float, constants: laws.LawConstants) -> tuple[float, str]:
    given = [(name, v) for name, v in (("--flops", flops), ("--chip-hours", chip_hours), ("--tokens", tokens))
             if v is not None]
    if len(given) != 1:
        raise ConfigError("jaxtrain plan: give one budget: --flops, --chip-hours or --tokens (got "
                          f"{[name for name, _ in given] or 'none'}).")
    name, value = given[0]
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}: must be a positive finite number, got {value:g} (e.g. {name}=1e21).")
    if flops:
        return flops, f"{flops:.3g} FLOPs"
    if chip_hours:
        return (laws.flops_from_chip_hours(chip_hours, chip.peak_flops, mfu),
                f"{chip_hours:g} {chip.name} chip-hours at {mfu:.0%} MFU")
    lo, hi = 1e12, 1e30  # the compute whose compute-optimal token count is `tokens` (monotone in C)
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if laws.compute_optimal(mid, constants).tokens < tokens else (lo, mid)
    return math.sqrt(lo * hi), f"{tokens:.3g} tokens"


# Widths: 1, 2 or 4 heads of HEAD_DIM (multi-head), then multiples of GQA_KV_HEADS heads (Llama 3: 2048, 3072,
# 4096, 8192), so the KV heads are always 8 beyond 4 heads and a tensor axis of up to 8 splits them.
WIDTHS = (HEAD_DIM, 2 * HEAD_DIM, 4 * HEAD_DIM, *(GQA_KV_HEADS * HEAD_DIM * k for k in range(1, 33)))
ASPECT_WEIGHT = 0.25  # how much a width/layers ratio away from WIDTH_PER_LAYER costs against a miss of N (log)


def model_shape(base: RunConfig, n_params: float) -> RunConfig:
    """The Llama-shaped model (WIDTHS, GQA, SwiGLU 8/3 d rounded to 256) whose matmul parameters are closest to
    n_params in log space, with a width per layer near WIDTH_PER_LAYER; the base config's vocabulary and dtypes."""
    best = None
    for width in WIDTHS:
        heads = width // HEAD_DIM
        for layers in range(1, 161):
            model = dataclasses.replace(base.model, num_layers=layers, embed_dim=width, num_heads=heads,
                                        num_kv_heads=GQA_KV_HEADS if heads % GQA_KV_HEADS == 0 else heads,
                                        head_dim=HEAD_DIM, mlp_dim=256 * math.ceil(8 * width / 3 / 256),
                                        max_seq_len=max(base.model.max_seq_len, base.data.seq_len))
            score = (abs(math.log(matmul_params(model) / n_params))
                     + ASPECT_WEIGHT * abs(math.log(width / (WIDTH_PER_LAYER * layers))))
            if best is None or score < best[0]:
                best = (score, model)
    return dataclasses.replace(base, model=best[1])


def estimate_bytes(cfg: RunConfig, chips: int) -> float:
    """Per-chip HBM the step needs, roughly: f32 weights and Adam moments sharded over every chip (FSDP), an
    f32 gradient accumulator when microbatching, the activations of one microbatch (all of them without
    remat; each layer's bf16 input plus one layer's with full remat) and the loss chunk's f32 logits."""
    m, t = cfg.model, cfg.train
    params = matmul_params(m) + (0 if m.tie_embeddings else m.embed_dim * m.vocab_size)
    state = params * (12 + (4 if t.microbatches > 1 else 0)) / chips
    rows = max(1, t.batch_size // t.microbatches // chips)
    tokens = rows * cfg.data.seq_len
    per_layer = ACTIVATION_BYTES_PER_TOKEN_DIM * m.embed_dim * tokens
    activations = per_layer * m.num_layers if m.remat == "none" else 2 * m.embed_dim * tokens * m.num_layers + per_layer
    chunk = t.loss_chunk or cfg.data.seq_len
    return state + activations + 2 * 4 * rows * chunk * m.vocab_size


def candidates(cfg: RunConfig, chips: int) -> Iterator[RunConfig]:
    """(remat, microbatches) settings in order of cost: no remat, fewer microbatches first."""
    for remat, floor in (("none", MIN_ROWS_NO_REMAT), ("full", 1)):
        mb = 1
        while cfg.train.batch_size % mb == 0 and cfg.train.batch_size // mb >= floor * chips:
            yield dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, remat=remat),
                                      train=dataclasses.replace(cfg.train, microbatches=mb))
            mb *= 2


def suggest_fit(cfg: RunConfig, topology: str, measured_bytes: int) -> str:
    """For a compile that did not fit: the cheapest remat/microbatch setting the estimate (calibrated by what
    this compile measured) puts under ESTIMATE_MARGIN of HBM, as overrides, or the advice to add chips."""
    chip, chips = slice_chips(topology)
    scale = measured_bytes / estimate_bytes(cfg, chips)
    for option in candidates(cfg, chips):
        needed = estimate_bytes(option, chips) * scale
        if needed <= ESTIMATE_MARGIN * chip.hbm_bytes:
            return (f"try model.remat={option.model.remat} train.microbatches={option.train.microbatches} (estimated "
                    f"{needed / 2**30:.1f} GiB of {chip.hbm_bytes / 2**30:.0f} GiB per chip), or let `jaxtrain plan` "
                    "search by compiling")
    return (f"no remat or microbatch setting is estimated to fit {chips} x {chip.name}: use a slice with more chips "
            "(FSDP shards the state over all of them), a smaller model, or a smaller train.batch_size")


def search_memory(plan: Plan, compile_fn: Callable[[RunConfig], "aot.CompileReport"]) -> Plan:
    """Compile candidates until one fits. The estimate skips the ones it says are over ESTIMATE_MARGIN of HBM,
    rescaled by what the compiles of the same remat policy measured (measured / estimated, the largest)."""
    hbm, scale = plan.chip.hbm_bytes, {}  # per remat policy: the estimate's error differs between them
    settings = list(candidates(plan.cfg, plan.chips))
    for i, cfg in enumerate(settings):
        last = i == len(settings) - 1  # the most frugal setting is compiled even when estimated not to fit
        remat = cfg.model.remat
        if estimate_bytes(cfg, plan.chips) * scale.get(remat, 1.0) > ESTIMATE_MARGIN * hbm and not (
                last and not plan.compiled):
            continue
        report = compile_fn(cfg)
        plan.cfg = cfg
        plan.compiled.append((remat, cfg.train.microbatches, report))
        if report.fits:
            return plan
        scale[remat] = max(scale.get(remat, 1.0), report.bytes_per_chip / estimate_bytes(cfg, plan.chips))
    if not plan.fits:
        state = estimate_bytes(dataclasses.replace(plan.cfg, train=dataclasses.replace(
            plan.cfg.train, batch_size=plan.chips, microbatches=1)), plan.chips)
        plan.notes.append(f"no remat or microbatch setting fits {plan.topology} (the state and one row per chip "
                          f"alone are about {state / 2**30:.1f} GiB of {hbm / 2**30:.0f} GiB): use a slice with more "
                          "chips, or a smaller budget")
    return plan


def read_constants(path: str) -> tuple[laws.LawConstants, tuple]:
    """The law constants and the fitted compute range of a `jaxtrain scaling fit` file, or a one-line refusal."""
    fields = [f.name for f in dataclasses.fields(laws.LawConstants)]
    try:
        fit = json.loads(pathlib.Path(path).read_text())
        given = fit["constants"]
        missing = [f for f in fields if f not in given]
        if missing:
            raise KeyError(", ".join(missing))
        return laws.LawConstants(**{f: float(given[f]) for f in fields}), tuple(fit.get("flops_range") or (0, 0))
    except OSError as e:
        raise ConfigError(f"--constants {path}: cannot read it ({e.strerror or e}); give the scaling_fit.json "
                          "that `jaxtrain scaling fit` wrote.") from e
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--constants {path}: not a scaling_fit.json (needs constants {fields}; {e!s:.80}); give "
                          "the file `jaxtrain scaling fit` wrote.") from e


def make_plan(base: RunConfig, topology: str, *, flops: float | None = None, chip_hours: float | None = None,
              tokens: float | None = None, mfu: float = hardware.ASSUMED_MFU,
              constants_file: str | None = None) -> Plan:
    """Steps 1-4 of the module docstring (no compilation)."""
    chip, chips = slice_chips(topology)
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu: must be in (0, 1], got {mfu:g} (MaxText's published dense TPU results are 0.45-0.71).")
    constants, fitted, source = laws.EPOCH_AI, EPOCH_AI_RANGE, "Epoch AI's refit of Chinchilla"
    if constants_file:
        constants, fitted = read_constants(constants_file)
        source = f"{constants_file} (jaxtrain scaling fit)"
    compute, text = budget_flops(flops, chip_hours, tokens, chip, mfu, constants)
    law = laws.compute_optimal(compute, constants)
    notes = []
    if fitted[1] and not fitted[0] / EXTRAPOLATION_FACTOR <= compute <= fitted[1] * EXTRAPOLATION_FACTOR:
        notes.append(f"extrapolated: {compute:.2g} FLOPs is more than {EXTRAPOLATION_FACTOR:g}x outside the "
                     f"{fitted[0]:.2g}-{fitted[1]:.2g} FLOPs the scaling law was fitted on; treat N and D as a guess")
    elif not fitted[1]:
        notes.append(f"{constants_file} does not record the compute it was fitted on: rerun `jaxtrain scaling fit`")
    cfg = model_shape(base, law.params)
    shape_n = matmul_params(cfg.model)
    if abs(math.log(shape_n / law.params)) > math.log(2):
        notes.append(f"the nearest model shape has {shape_n:.3g} matmul parameters, more than 2x from the "
                     f"compute-optimal {law.params:.3g} (the vocabulary's {base.model.vocab_size} x width dominates "
                     "small models; the shapes stop at 160 layers of 32768)")
    state = (shape_n + (0 if cfg.model.tie_embeddings else cfg.model.embed_dim * cfg.model.vocab_size)) * 12
    if state > chips * chip.hbm_bytes * (1 - aot.HBM_HEADROOM):
        notes.append(f"the weights and Adam moments alone ({state / 2**30:,.0f} GiB) exceed the HBM of all "
                     f"{chips} chips ({chips * chip.hbm_bytes / 2**30:,.0f} GiB): use a slice with more chips")
    seq = cfg.data.seq_len
    batch = max(chips, 2 ** round(math.log2(BATCH_RULE[0] * compute ** BATCH_RULE[1] / seq)))
    steps = max(1, round(law.tokens / (batch * seq)))
    lr = LR_RULE[0] * compute ** LR_RULE[1]
    cfg = dataclasses.replace(
        cfg, mesh=dataclasses.replace(cfg.mesh, dcn=1, data=1, fsdp=-1, tensor=1),
        train=dataclasses.replace(cfg.train, batch_size=batch, steps=steps, microbatches=1),
        optimizer=dataclasses.replace(cfg.optimizer, learning_rate=float(f"{lr:.3g}"),
                                      warmup_steps=min(WARMUP_STEPS, max(1, steps // 10))))
    if steps < 1000:
        notes.append(f"only {steps} steps of {batch} sequences: the budget is small for this batch rule")
    return Plan(cfg, topology, chips, chip, compute, law, text, notes, mfu, source)


def render_yaml(plan: Plan, base_name: str) -> str:
    m, t, o = plan.cfg.model, plan.cfg.train, plan.cfg.optimizer
    law = plan.law
    if plan.compiled:
        memory = f"# Memory: {'fits' if plan.fits else 'DOES NOT FIT'} by AOT compile for {plan.topology}."
        searched = "the cheapest setting that fits (AOT search)"
    else:
        memory = f"# Memory: not checked (--no-compile): run jaxtrain compile --config THIS --topology {plan.topology}."
        searched = "the base config's, not checked (--no-compile)"
    return "\n".join([
        f"# jaxtrain plan: {plan.budget_text} on {plan.topology} ({plan.chips} x {plan.chip.name}).",
        f"# Compute {plan.flops:.3g} FLOPs -> compute-optimal N {law.params:.3g}, D {law.tokens:.3g} tokens "
        f"(predicted loss {law.predicted_loss:.3f}; constants: {plan.constants_source}).",
        memory,
        *[f"# Note: {n}." for n in plan.notes],
        f"base: {base_name}",
        f"name: plan-{plan.topology.replace(':', '-')}",
        "model:",
        f"  num_layers: {m.num_layers}  # near width {WIDTH_PER_LAYER} per layer (Llama 3 8B: 128)",
        f"  embed_dim: {m.embed_dim}  # {matmul_params(m):.3g} matmul parameters, the nearest Llama shape to N",
        f"  num_heads: {m.num_heads}  # head_dim {HEAD_DIM}",
        f"  num_kv_heads: {m.num_kv_heads}  # " + ("grouped-query attention, Llama 3's 8 KV heads"
                                                  if m.num_kv_heads < m.num_heads else "multi-head (4 heads or fewer)"),
        f"  head_dim: {m.head_dim}",
        f"  mlp_dim: {m.mlp_dim}  # SwiGLU, 8/3 of the width rounded up to 256",
        f"  max_seq_len: {m.max_seq_len}",
        f"  remat: {m.remat}  # {searched}",
        "train:",
        f"  batch_size: {t.batch_size}  # DeepSeek LLM rule 0.292 C^0.3271 tokens, a power of two of sequences",
        f"  steps: {t.steps}  # D / tokens per step",
        f"  microbatches: {t.microbatches}  # gradient accumulation: {searched}",
        "optimizer:",
        f"  learning_rate: {o.learning_rate}  # DeepSeek LLM rule 0.3118 C^-0.125",
        f"  warmup_steps: {o.warmup_steps}  # DeepSeek LLM's 2000, or a tenth of a shorter run",
        "mesh: {dcn: 1, data: 1, fsdp: -1, tensor: 1}  # FSDP over every chip",
        "",
    ])


def render_summary(plan: Plan) -> str:
    cfg, law = plan.cfg, plan.law
    step = plan.step_seconds
    lines = [f"budget          {plan.budget_text} = {plan.flops:.3e} FLOPs on {plan.topology} "
             f"({plan.chips} x {plan.chip.name})",
             f"scaling law     N {law.params:.3e}, D {law.tokens:.3e} tokens ({law.tokens_per_param:.1f} per "
             f"parameter), predicted loss {law.predicted_loss:.3f} (constants: {plan.constants_source})",
             f"model           {cfg.model.num_layers} layers x {cfg.model.embed_dim}, {cfg.model.num_heads} heads "
             f"({cfg.model.num_kv_heads} KV), MLP {cfg.model.mlp_dim}: {matmul_params(cfg.model):.3e} matmul params",
             f"batch, lr       {cfg.train.batch_size} x {cfg.data.seq_len} tokens, peak lr {cfg.optimizer.learning_rate}, "
             f"{cfg.train.steps} steps (warmup {cfg.optimizer.warmup_steps})"]
    for remat, mb, report in plan.compiled:
        lines.append(f"compiled        remat={remat} microbatches={mb}: {report.bytes_per_chip / 2**30:.2f} GiB of "
                     f"{report.hbm_per_chip / 2**30:.0f} GiB per chip -> {'fits' if report.fits else 'does not fit'} "
                     f"({report.compile_seconds:.0f}s)")
    lines.append(f"projected       {step:.2f} s/step, {cfg.tokens_per_step / step / plan.chips:,.0f} tokens/s per chip, "
                 f"{cfg.train.steps * step / 3600:,.1f} hours at an assumed {plan.mfu:.0%} MFU")
    lines += [f"note            {n}" for n in plan.notes]
    return "\n".join(lines)


def run(base_name: str, topology: str, out: pathlib.Path, *, flops=None, chip_hours=None, tokens=None,
        mfu: float = hardware.ASSUMED_MFU, constants_file: str | None = None, compile: bool = True) -> Plan:
    plan = make_plan(load_config(base_name), topology, flops=flops, chip_hours=chip_hours, tokens=tokens, mfu=mfu,
                     constants_file=constants_file)
    if compile:
        search_memory(plan, lambda cfg: aot.compile_for_topology(cfg, topology, assumed_mfu=mfu))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_yaml(plan, base_name))
    return plan


def nearest_preset(n_params: float) -> tuple[str, float]:
    """The preset in configs/ whose matmul-parameter count is closest in log space."""
    best = None
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        n = matmul_params(load_config(path.stem).model)
        score = abs(math.log(n / n_params))
        if best is None or score < best[2]:
            best = (path.stem, n, score)
    return best[0], best[1]


def law_summary(flops: float | None = None, chip_hours: float | None = None, chip: str | None = None,
                mfu: float = 0.4, constants_file: str | None = None) -> str:
    """`jaxtrain scaling plan`: the compute-optimal N and D for a budget, in FLOPs or chip-hours (no config:
    `jaxtrain plan` writes one)."""
    constants = read_constants(constants_file)[0] if constants_file else laws.EPOCH_AI
    for name, value in (("--flops", flops), ("--chip-hours", chip_hours), ("--mfu", mfu)):
        if value is not None and not (math.isfinite(value) and 0 < value and (name != "--mfu" or value <= 1)):
            raise ConfigError(f"{name}: must be a positive finite number{' up to 1' if name == '--mfu' else ''}, "
                              f"got {value:g}.")
    if flops:
        budget = flops
    elif chip_hours and chip:
        budget = laws.flops_from_chip_hours(chip_hours, hardware.CHIPS[chip].peak_flops, mfu)
    else:
        raise ValueError("give flops, or chip_hours with chip (and mfu)")
    result = laws.compute_optimal(budget, constants)
    preset, preset_n = nearest_preset(result.params)
    source = f"fit {constants_file}" if constants_file else "Epoch AI replication of Chinchilla"
    return "\n".join([
        f"compute        {budget:.3e} FLOPs",
        f"parameters     {result.params:.3e}  (compute-optimal N)",
        f"tokens         {result.tokens:.3e}  ({result.tokens_per_param:.1f} tokens per parameter)",
        f"predicted loss {result.predicted_loss:.3f}  (constants: {source})",
        f"nearest preset {preset} ({preset_n:.3e} matmul parameters)",
        "a config for a topology: jaxtrain plan --flops C --topology v5p-8",
    ])
