"""Driving scaling studies: IsoFLOP sweeps of real runs and fits (plans from them: `jaxtrain.plan`).

The laws and FLOP counts live in `jaxtrain.scaling`; this module drives them.
Each (budget, size) pair of a sweep is a real training run
(`jaxtrain.pipeline.train`) in its own run directory that shares the base
run's prepared data and tokenizer; steps = budget / (FLOPs per token x tokens
per step). Results go to `sweep.jsonl`, one line per run, which `fit_sweep`
turns into law constants, IsoFLOP optima and a plot.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Sequence

from jaxtrain import pipeline
from jaxtrain.config import RunConfig
from jaxtrain.rundir import RunDir
from jaxtrain.runconfig import Resolved
from jaxtrain.scaling import laws
from jaxtrain.scaling.flops import flops_per_token, matmul_params
from jaxtrain.utils import log

# (layers, width) rungs; heads = width // 32, MLP 4x width.
DEFAULT_LADDER = ((1, 32), (2, 48), (2, 64), (3, 96), (4, 128))


def rung_config(base: RunConfig, layers: int, width: int, budget: float, run_dir: pathlib.Path) -> RunConfig:
    heads = max(1, width // 32)
    model = dataclasses.replace(
        base.model, num_layers=layers, embed_dim=width, num_heads=heads, num_kv_heads=heads, head_dim=0,
        mlp_dim=4 * width,
    )
    steps = max(1, round(budget / (flops_per_token(model, base.data.seq_len) * base.tokens_per_step)))
    return dataclasses.replace(
        base,
        name=f"{base.name}-C{budget:.0e}-L{layers}-D{width}",
        run_dir=str(run_dir),
        model=model,
        train=dataclasses.replace(base.train, steps=steps, log_every=max(1, steps // 5)),
        optimizer=dataclasses.replace(base.optimizer, warmup_steps=max(1, min(base.optimizer.warmup_steps, steps // 10))),
        checkpoint=dataclasses.replace(base.checkpoint, every_steps=steps, keep=1),
        eval=dataclasses.replace(base.eval, every_steps=steps),
        mesh=dataclasses.replace(base.mesh, tensor=1),
    )


def run_sweep(
    base: Resolved, out_dir: pathlib.Path, budgets: Sequence[float], ladder: Sequence[tuple[int, int]] = DEFAULT_LADDER,
) -> list[dict]:
    """Train every (budget, rung) not yet in out_dir/sweep.jsonl; `base` is the resolved base run (its config
    and its prepared data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "sweep.jsonl"
    done = {(r["flops"], r["layers"], r["width"]) for r in read_results(results_path)}
    for budget in budgets:
        for layers, width in ladder:
            if (budget, layers, width) in done:
                continue
            run_dir = out_dir / f"C{budget:.0e}-L{layers}-D{width}"
            cfg = rung_config(base.cfg, layers, width, budget, run_dir)
            source, target = base.run, RunDir(run_dir)
            # the base run's prepared data and tokenizer, shared by every rung
            for src, dst in ((source.data, target.data), (source.tokenizer.parent, target.tokenizer.parent)):
                if not dst.exists():
                    shutil.copytree(src, dst)
            log(f"[sweep] budget {budget:.2e} FLOPs: {layers} layers x {width} wide, {cfg.train.steps} steps")
            result = pipeline.train(cfg, run_dir)
            tokens = cfg.train.steps * cfg.tokens_per_step
            record = {
                "flops": budget, "layers": layers, "width": width, "params": matmul_params(cfg.model),
                "tokens": tokens, "steps": cfg.train.steps, "loss": result["eval"]["eval/loss"],
            }
            with results_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
    return read_results(results_path)


def read_results(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fit_sweep(results: list[dict], out_dir: pathlib.Path) -> dict:
    if len(results) < 5:
        raise ValueError(f"a fit needs at least 5 runs (5 free constants); have {len(results)}.")
    n = [r["params"] for r in results]
    d = [r["tokens"] for r in results]
    losses = [r["loss"] for r in results]
    flops = [r["flops"] for r in results]
    constants = laws.fit_law(n, d, losses)
    optima = laws.isoflop_optima(flops, n, losses)
    summary = {"constants": dataclasses.asdict(constants), "isoflop_optimal_params": optima,
               "flops_range": [min(flops), max(flops)]}  # `jaxtrain plan` says when a budget is far outside it
    if len(optima) >= 2:
        k, p = laws.power_law(list(optima), list(optima.values()))
        summary["n_opt_power_law"] = {"k": k, "exponent": p}
    out_dir.mkdir(parents=True, exist_ok=True)
    laws.plot_fit(out_dir / "scaling_fit.png", n, d, losses, constants, flops)
    (out_dir / "scaling_fit.json").write_text(json.dumps(summary, indent=2))
    return summary
