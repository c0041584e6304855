"""Does the proposed mixture beat the defaults? `jaxtrain mixture` on the demo's sources, then the proposal,
the natural and the uniform mixture trained at the proxy size and at a model about 4x larger with 4x the
tokens, two seeds each (issue #21).

    python benchmarks/mixture_proof.py [--proxies 16] [--steps 100] [--seeds 0 1] [--out runs/mixture-bench]
        [--json benchmarks/results/mixture_proof.json]

The base run: the demo's four sources (stdlib code, the Python documentation, package metadata and the
offline web crawl, curated as in the demo) with the Python documentation (`stdlib_docs`) as the target,
held out of every run. The larger model is the demo's (4 layers, width 192: about 4.1x the proxy's
non-embedding parameters) trained for 4 x --steps; that run's budget sets the repetition bound the search
samples under. The proxies: 2 layers of width 128, --steps steps. Every run is scored on the whole held-out
split of every source in bits per byte, so a mixture that wins the target by wrecking the others shows it.
Proxy compute is reported as a fraction of one larger run's (6 N D with N the non-embedding parameters).
A killed benchmark resumes: the search and every finished run are read back from OUT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np
import yaml

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from jaxtrain import ablate, mixture, pipeline, runconfig  # noqa: E402  (after the platform flags)
from jaxtrain.config import CONFIG_DIR  # noqa: E402
from jaxtrain.data import sample_crawl  # noqa: E402
from jaxtrain.evaluate import evaluation  # noqa: E402
from jaxtrain.evaluate.evaluator import Evaluator  # noqa: E402
from jaxtrain.rundir import RunDir  # noqa: E402
from jaxtrain.train.trainer import load_params  # noqa: E402

TARGET = "stdlib_docs"
# The proxy: half the demo's depth, two thirds of its width (0.39M non-embedding parameters vs the demo's 1.62M).
PROXY = ("model.num_layers=2", "model.embed_dim=128", "model.mlp_dim=384")
COMPARED = ("proposal", "natural", "uniform")


def base_config(out: pathlib.Path, crawl: pathlib.Path, steps: int) -> pathlib.Path:
    cfg = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    next(s for s in cfg["data"]["sources"] if s["name"] == "web")["path"] = str(crawl / "*.warc.gz")
    cfg["name"], cfg["run_dir"] = "mixture-bench", str(out / "base")
    cfg["train"]["steps"] = 4 * steps  # the larger run: its budget is what the repetition bound plans for
    cfg["eval"]["tasks"] = False  # the score is held-out bits per byte
    path = out / "base.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def non_embedding_params(cfg) -> int:
    m = cfg.model
    head = m.embed_dim // m.num_heads
    attention = m.embed_dim * head * (2 * m.num_heads + 2 * m.num_kv_heads)
    return m.num_layers * (attention + 3 * m.embed_dim * m.mlp_dim)


def score_all(cfg, base_run: RunDir, sources: list[str]) -> dict:
    """Bits per byte of a run's final checkpoint on the whole held-out split of every source."""
    session, params, step = load_params(cfg, RunDir(cfg.run_dir), None)
    held = evaluation.evaluate(Evaluator(session).eval_step, params, base_run, sources, seq_len=session.seq_len,
                               batch_size=session.batch_size, rows=session.rows, max_batches=1 << 30,
                               to_global=session.to_global)
    return {"step": step, **{s: held[f"eval/{s}/bpb"] for s in sources}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--proxies", type=int, default=16)
    p.add_argument("--steps", type=int, default=100, help="the proxies' steps; the larger runs train 4x as many")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default="runs/mixture-bench")
    p.add_argument("--json", default="benchmarks/results/mixture_proof.json")
    a = p.parse_args(argv)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sample_crawl.build(str(out / "crawl"))
    start = time.perf_counter()
    base = runconfig.resolve(str(base_config(out, out / "crawl", a.steps)), [], str(out / "base"), data=True)
    search_start = time.perf_counter()
    fit = mixture.run_mixture(base, TARGET, out / "search", proxies=a.proxies, steps=a.steps, seeds=(0,),
                              proxy_overrides=PROXY)
    search_s = time.perf_counter() - search_start
    search = mixture.plan_search(base, TARGET, a.proxies)
    shares = {name: np.asarray(fit["mixtures"][name]["shares"]) for name in COMPARED}
    compared = dataclasses.replace(search, mixtures=np.stack([shares[n] for n in COMPARED]))
    sources = list(base.cfg.data.source_names)
    results_path = out / "compared.jsonl"
    done = {(r["mixture"], r["scale"], r["seed"]) for r in ablate.read_results(results_path)}
    for scale, steps, overrides in (("proxy", a.steps, PROXY), ("4x", 4 * a.steps, ())):
        for index, name in enumerate(COMPARED):
            for seed in a.seeds:
                if (name, scale, seed) in done:
                    continue
                cfg = mixture.proxy_config(base, compared, index, seed, TARGET, out / "compared" / scale, steps,
                                           overrides)
                cfg = dataclasses.replace(cfg, name=f"mixture-bench-{name}-{scale}-s{seed}",
                                          run_dir=str(out / "compared" / scale / f"{name}-s{seed}"))
                mixture._share_data(base.run, RunDir(cfg.run_dir))
                t0 = time.perf_counter()
                pipeline.train(cfg, cfg.run_dir, prepare_data=True)
                record = {"mixture": name, "scale": scale, "seed": seed, "steps": steps,
                          "shares": dict(zip(search.sources, shares[name].round(4).tolist())),
                          "params_non_embedding": non_embedding_params(cfg), "tokens": steps * cfg.tokens_per_step,
                          "train_s": round(time.perf_counter() - t0, 1), **score_all(cfg, base.run, sources)}
                print(f"[mixture-bench] {name} at {scale}, seed {seed}: {TARGET} {record[TARGET]:.4f} bpb", flush=True)
                with results_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
    runs = ablate.read_results(results_path)
    summary = {}
    for scale in ("proxy", "4x"):
        for name in COMPARED:
            mine = [r for r in runs if r["scale"] == scale and r["mixture"] == name]
            summary[f"{name} @ {scale}"] = {s: {"mean": statistics.mean(r[s] for r in mine),
                                               "spread": max(r[s] for r in mine) - min(r[s] for r in mine)}
                                           for s in sources}
    large = next(r for r in runs if r["scale"] == "4x")
    proxy = next(r for r in runs if r["scale"] == "proxy")
    proxy_compute = a.proxies * 6 * proxy["params_non_embedding"] * proxy["tokens"]
    record = {"machine": platform.platform(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
              "argv": argv if argv is not None else sys.argv[1:], "target": TARGET, "proxies": a.proxies,
              "proxy_overrides": list(PROXY), "search_s": round(search_s), "wall_s": round(time.perf_counter() - start),
              "proxy_compute_fraction_of_one_4x_run":
                  proxy_compute / (6 * large["params_non_embedding"] * large["tokens"]),
              "fit": {k: fit[k] for k in ("sources", "law", "held_out_mae", "mean_baseline_mae", "caps",
                                          "extrapolated", "mixtures")},
              "runs": runs, "summary": summary}
    pathlib.Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.json).write_text(json.dumps(record, indent=1))
    print(f"| mixture @ scale | " + " | ".join(sources) + " |")
    for key, row in summary.items():
        print(f"| {key} | " + " | ".join(f"{row[s]['mean']:.4f} ± {row[s]['spread'] / 2:.4f}" for s in sources) + " |")
    return record


if __name__ == "__main__":
    main()
