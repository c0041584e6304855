"""Same GPT-2-style model, same optimizer, float32, CPU: jaxtrain vs a plain PyTorch eager reference.

    python benchmarks/cpu_vs_torch.py [--steps 40] [--warmup 8] [--rounds 3] [--dtype bfloat16]

`--dtype bfloat16` computes in bf16 in both (jaxtrain: model.dtype, float32 master
weights; PyTorch: CPU autocast), the path that uses AMX tiles where the CPU has them.

Each (framework, size) is timed in its own subprocess with one device and the
machine's cores; rounds alternate frameworks so drift hits both. Reports the
median step time (after warm-up, with results synced to the host every step)
and the ratio jaxtrain / torch (< 1 means jaxtrain is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZES = {
    "small": dict(layers=4, heads=4, width=128, ctx=64, batch=12, vocab=65),
    "medium": dict(layers=6, heads=6, width=384, ctx=256, batch=16, vocab=65),
}
LR, BETAS, WD, CLIP = 1e-3, (0.9, 0.95), 0.1, 1.0


def _batches(size: dict, n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    data = rng.integers(0, size["vocab"], size=(n, size["batch"], size["ctx"] + 1)).astype(np.int32)
    return data[:, :, :-1], data[:, :, 1:]


def run_jax(size: dict, steps: int, warmup: int, dtype: str = "float32") -> list[float]:
    import jax
    import numpy as np

    from jaxtrain.models import ModelConfig
    from jaxtrain.parallel import mesh as mesh_lib
    from jaxtrain.train import state as state_lib
    from jaxtrain.train.optimizer import OptimizerConfig, make_optimizer
    from jaxtrain.train.loss import make_loss_fn
    from jaxtrain.train.step import make_train_step

    cfg = ModelConfig(
        vocab_size=size["vocab"], num_layers=size["layers"], embed_dim=size["width"], num_heads=size["heads"],
        num_kv_heads=size["heads"], mlp_dim=4 * size["width"], max_seq_len=size["ctx"], pos_embedding="learned",
        norm="layernorm", norm_eps=1e-5, mlp="gelu", use_bias=True, tie_embeddings=True, attention="xla",
        scan_layers=False, dtype=dtype,
    )
    tx = make_optimizer(OptimizerConfig(learning_rate=LR, warmup_steps=0, min_lr_ratio=1.0, weight_decay=WD,
                                        b1=BETAS[0], b2=BETAS[1], grad_clip=CLIP), 10**6)
    mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    spec = state_lib.model_spec(cfg)
    shardings = state_lib.state_shardings(spec, tx, mesh)
    state = state_lib.init_state(cfg, tx, shardings, seed=0)
    step = jax.jit(make_train_step(make_loss_fn(spec.graphdef, None, None, chunk=0), tx), donate_argnums=0)
    inputs, targets = _batches(size, steps + warmup)
    B, L = inputs.shape[1:]
    fixed = {"segment_ids": np.ones((B, L), np.int32), "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)),
             "loss_mask": np.ones((B, L), np.float32)}
    times = []
    for i in range(steps + warmup):
        batch = {"inputs": inputs[i], "targets": targets[i], **fixed}
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        float(metrics["loss"])
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def run_torch(size: dict, steps: int, warmup: int, dtype: str = "float32") -> list[float]:
    import torch
    import torch.nn.functional as F

    from torch_gpt import GPT  # the same PyTorch peer as quality_vs_torch.py (benchmarks/ is on sys.path)

    torch.manual_seed(0)
    V = size["vocab"]
    model = GPT(V, size["layers"], size["width"], size["heads"], size["ctx"])
    opt = model.optimizer(LR, BETAS, WD)
    inputs, targets = _batches(size, steps + warmup)
    times = []
    for i in range(steps + warmup):
        x, y = torch.from_numpy(inputs[i]).long(), torch.from_numpy(targets[i]).long()
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        loss.item()
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def child(framework: str, size_name: str, steps: int, warmup: int, dtype: str) -> None:
    size = SIZES[size_name]
    times = run_jax(size, steps, warmup, dtype) if framework == "jax" else run_torch(size, steps, warmup, dtype)
    print(json.dumps({"median_s": statistics.median(times)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "SIZE"))
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.steps, args.warmup, args.dtype)
    env = dict(os.environ, XLA_FLAGS=os.environ.get("BENCH_XLA_FLAGS", ""), JAX_PLATFORMS="cpu")
    print("| size | jaxtrain ms/step | torch ms/step | ratio jax/torch | rounds |")
    print("|---|---|---|---|---|")
    for size_name in args.sizes:
        results: dict[str, list[float]] = {"jax": [], "torch": []}
        for _ in range(args.rounds):
            for fw in ("jax", "torch"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", fw, size_name, "--steps", str(args.steps), "--warmup", str(args.warmup),
                     "--dtype", args.dtype],
                    capture_output=True, text=True, env=env, check=True,
                )
                results[fw].append(json.loads(out.stdout.strip().splitlines()[-1])["median_s"])
        j, t = statistics.median(results["jax"]), statistics.median(results["torch"])
        print(f"| {size_name} {SIZES[size_name]} | {j * 1e3:.2f} | {t * 1e3:.2f} | {j / t:.2f} | {args.rounds} |", flush=True)


if __name__ == "__main__":
    main()
