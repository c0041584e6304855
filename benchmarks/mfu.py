"""MFU on one GPU: jaxtrain's real train step against a PyTorch peer of the same shape, in the same run.

    python benchmarks/mfu.py --out mfu.json                 # llama-1b shape, sequence 2048, one GPU
    python benchmarks/mfu.py --tiny --out /tmp/mfu.json     # both frameworks on CPU in seconds (the test runs this)

jaxtrain: the llama-1b preset's model (configs/llama-1b.yaml: 1.24B parameters,
GQA 32/8, 128k vocabulary, tied embeddings), bf16 compute with float32 master
weights, `attention: auto` (the Pallas flash kernel on GPU), the chunked
cross-entropy, AdamW with clipping and the stability guard: `make_train_step`
as the Trainer builds it, on packed batches (several documents per row,
positions restarting per document, segment ids).
PyTorch peer: the same shape (RMSNorm, RoPE, SwiGLU, GQA, tied head), bf16
autocast over float32 parameters, SDPA flash attention (causal over the row:
SDPA takes no document mask, so the peer does the same attention FLOPs without
the packing mask), fused AdamW, clipping, `torch.compile`.

Each framework runs in its own process (JAX preallocates most of the GPU's
memory), times `--steps` steps after `--warmup` and reports the median step
time, tokens/s, MFU (FLOPs per token from jaxtrain.scaling.flops, the peak from
jaxtrain.hardware; n/a on CPU) and peak device memory. The JSON file holds
every figure and the tokens/s ratio jaxtrain / PyTorch.

Imports only jax, flax, optax, torch, numpy, yaml and jaxtrain's model, step,
loss, state and FLOPs modules, so a stock JAX + PyTorch GPU image runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = {"vocab_size": 512, "num_layers": 2, "embed_dim": 64, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
        "mlp_dim": 128, "rope_theta": 10000.0, "norm_eps": 1e-5, "tie_embeddings": True}
SHAPE_KEYS = tuple(TINY)
LR, BETAS, EPS, WD, CLIP = 3e-4, (0.9, 0.95), 1e-8, 0.1, 1.0  # the llama-1b preset's optimizer
MEAN_DOC_LEN = 600  # documents per packed row: a web-text-like mean length, several per 2048-token row


def preset_shape() -> dict:
    import yaml

    model = yaml.safe_load((ROOT / "configs" / "llama-1b.yaml").read_text())["model"]
    return {k: model[k] for k in SHAPE_KEYS}


def packed_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    """Random tokens packed into rows of several documents: segment ids 1..k, positions restarting per document."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, vocab, size=(batch, seq + 1)).astype(np.int32)
        segments = np.zeros((batch, seq), np.int32)
        positions = np.zeros((batch, seq), np.int32)
        for r in range(batch):
            start, doc = 0, 1
            while start < seq:
                length = min(int(rng.exponential(MEAN_DOC_LEN)) + 16, seq - start)
                segments[r, start:start + length] = doc
                positions[r, start:start + length] = np.arange(length)
                start, doc = start + length, doc + 1
        out.append({"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segments,
                    "positions": positions, "loss_mask": np.ones((batch, seq), np.float32)})
    return out


def run_jax(shape: dict, args) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from jaxtrain.hardware import peak_flops
    from jaxtrain.models import ModelConfig
    from jaxtrain.models.attention import resolve
    from jaxtrain.parallel import mesh as mesh_lib
    from jaxtrain.scaling import flops
    from jaxtrain.train import state as state_lib
    from jaxtrain.train.loss import make_loss_fn
    from jaxtrain.train.step import make_train_step

    cfg = ModelConfig(**shape, max_seq_len=args.seq, dtype="bfloat16", param_dtype="float32", attention="auto",
                      remat=args.remat, scan_layers=True)
    # AdamW as jaxtrain.train.optimizer builds it (clip, then AdamW with decay on matrices only), spelled
    # out with optax here because that module reads the run config, whose data section needs TFDS.
    decay = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    tx = optax.chain(optax.clip_by_global_norm(CLIP),
                     optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WD, mask=decay))
    device = jax.devices()[0]
    mesh = mesh_lib.make_mesh({"data": 1}, [device])
    spec = state_lib.model_spec(cfg)
    shardings = state_lib.state_shardings(spec, tx, mesh)
    state = state_lib.init_state(cfg, tx, shardings, seed=0)
    loss_fn = make_loss_fn(spec.graphdef, None, None, chunk=args.loss_chunk)
    step = jax.jit(make_train_step(loss_fn, tx), donate_argnums=0)
    batches = [jax.device_put({k: jnp.asarray(v) for k, v in b.items()}, device)
               for b in packed_batches(4, args.batch, args.seq, cfg.vocab_size)]
    t0 = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batches[i % len(batches)])
        losses.append(float(metrics["loss"]))  # blocks until the step is done
        times.append(time.perf_counter() - t0)
    stats = device.memory_stats() or {}
    return {"framework": f"jax {jax.__version__}", "device": device.device_kind, "attention": resolve("auto", device.platform),
            "compile_s": compile_s, "step_times_s": times[args.warmup:], "losses": losses,
            "peak_memory_bytes": stats.get("peak_bytes_in_use"),
            "flops_per_token": flops.flops_per_token(cfg, args.seq), "peak_flops": peak_flops(device.device_kind),
            "params": sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))}


def run_torch(shape: dict, args) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from jaxtrain.hardware import peak_flops
    from jaxtrain.models import ModelConfig
    from jaxtrain.scaling import flops

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    D, H, G, K, F_, V = (shape[k] for k in ("embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                                            "vocab_size"))
    L = args.seq

    def rms(x, w):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + shape["norm_eps"])).type_as(x) * w

    half = K // 2
    freq = shape["rope_theta"] ** (-torch.arange(half, dtype=torch.float32) / half)

    def rope(x, cos, sin):  # x: B, heads, L, K; first/second halves (the Llama layout jaxtrain uses)
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = nn.Parameter(torch.ones(D)), nn.Parameter(torch.ones(D))
            self.wq, self.wk, self.wv = nn.Linear(D, H * K, bias=False), nn.Linear(D, G * K, bias=False), \
                nn.Linear(D, G * K, bias=False)
            self.wo = nn.Linear(H * K, D, bias=False)
            self.w_in, self.w_gate = nn.Linear(D, F_, bias=False), nn.Linear(D, F_, bias=False)
            self.w_out = nn.Linear(F_, D, bias=False)

        def forward(self, x, cos, sin):
            B = x.shape[0]
            h = rms(x, self.n1)
            q = rope(self.wq(h).view(B, L, H, K).transpose(1, 2), cos, sin)
            k = rope(self.wk(h).view(B, L, G, K).transpose(1, 2), cos, sin)
            v = self.wv(h).view(B, L, G, K).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + self.wo(a.transpose(1, 2).reshape(B, L, H * K))
            h = rms(x, self.n2)
            return x + self.w_out(F.silu(self.w_gate(h)) * self.w_in(h))

    class Llama(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(V, D)
            self.blocks = nn.ModuleList(Block() for _ in range(shape["num_layers"]))
            self.norm = nn.Parameter(torch.ones(D))
            for p in self.parameters():
                if p.dim() >= 2:
                    nn.init.normal_(p, std=0.02)

        def forward(self, idx, positions):
            angle = positions.float()[:, None, :, None] * freq.to(idx.device)
            cos, sin = angle.cos(), angle.sin()
            x = self.embed(idx)
            for b in self.blocks:
                x = b(x, cos, sin)
            return rms(x, self.norm) @ self.embed.weight.T  # tied head

    model = Llama().to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": WD}, {"params": other, "weight_decay": 0.0}]
    try:
        opt, fused = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, fused=True), True
    except (RuntimeError, TypeError):  # no fused kernel for this device in this PyTorch
        opt, fused = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS), False
    compiled = torch.compile(model) if args.torch_compile else model

    def train_step(x, pos, y):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            logits = compiled(x, pos)
        loss = F.cross_entropy(logits.float().view(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        return loss.item()  # synchronizes

    batches = [tuple(torch.from_numpy(b[k]).long().to(dev) for k in ("inputs", "positions", "targets"))
               for b in packed_batches(4, args.batch, args.seq, V)]
    t0 = time.perf_counter()
    losses = [train_step(*batches[0])]  # the first step compiles
    compile_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        losses.append(train_step(*batches[i % len(batches)]))
        times.append(time.perf_counter() - t0)
    kind = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    cfg = ModelConfig(**shape, max_seq_len=L)
    return {"framework": f"torch {torch.__version__}", "device": kind, "attention": "sdpa (causal, no document mask)",
            "fused_adamw": fused, "torch_compile": bool(args.torch_compile), "compile_s": compile_s,
            "step_times_s": times[args.warmup:], "losses": losses,
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "flops_per_token": flops.flops_per_token(cfg, L), "peak_flops": peak_flops(kind) if cuda else None,
            "params": sum(p.numel() for p in model.parameters())}


def summarize(result: dict, tokens_per_step: int) -> dict:
    step = statistics.median(result["step_times_s"])
    tok_s = tokens_per_step / step
    peak = result.get("peak_flops")
    return {**result, "step_time_s_median": step, "tokens_per_s": tok_s,
            "mfu": result["flops_per_token"] * tok_s / peak if peak else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="mfu.json", help="where to write the JSON figures")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on CPU, seconds (the test suite runs it)")
    parser.add_argument("--batch", type=int, default=None,
                        help="rows per step (default 4: 8,192 tokens, which leaves the PyTorch peer's whole float32 "
                             "logits room on an 80 GB H100 without remat; an H200 takes 8; tiny: 4)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 2048; tiny: 64)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny: 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compilation (default 3; tiny: 1)")
    parser.add_argument("--remat", default="none", choices=["none", "full", "save_dots"])
    parser.add_argument("--loss-chunk", type=int, default=256, help="train.loss_chunk for jaxtrain (0: whole logits)")
    parser.add_argument("--frameworks", nargs="+", default=["jax", "torch"], choices=["jax", "torch"])
    parser.add_argument("--no-torch-compile", dest="torch_compile", action="store_false")
    parser.add_argument("--child", choices=["jax", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = {"batch": 4, "seq": 64, "steps": 3, "warmup": 1} if args.tiny else \
        {"batch": 4, "seq": 2048, "steps": 10, "warmup": 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    shape = TINY if args.tiny else preset_shape()
    if args.child:
        result = run_jax(shape, args) if args.child == "jax" else run_torch(shape, args)
        print("RESULT " + json.dumps(result))
        return

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if args.tiny:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    # JAX reserves 75% of GPU memory by default; each framework has the GPU to itself here.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    figures = {"shape": shape, "batch": args.batch, "seq": args.seq, "remat": args.remat, "loss_chunk": args.loss_chunk,
               "steps": args.steps, "warmup": args.warmup, "tiny": args.tiny, "time": time.time()}
    child_args = [f"--batch={args.batch}", f"--seq={args.seq}", f"--steps={args.steps}", f"--warmup={args.warmup}",
                  f"--remat={args.remat}", f"--loss-chunk={args.loss_chunk}"]
    child_args += (["--tiny"] if args.tiny else []) + ([] if args.torch_compile else ["--no-torch-compile"])
    for fw in args.frameworks:
        proc = subprocess.run([sys.executable, __file__, *child_args, "--child", fw], capture_output=True, text=True,
                              env=env)
        line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            figures[fw] = {"error": (proc.stderr or proc.stdout)[-3000:], "returncode": proc.returncode}
            print(f"[mfu] {fw} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        figures[fw] = summarize(json.loads(line[len("RESULT "):]), args.batch * args.seq)
        r = figures[fw]
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        memory = "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**30:.2f} GiB"
        print(f"[mfu] {fw:5s} {r['device']}: {r['step_time_s_median'] * 1e3:.1f} ms/step, "
              f"{r['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, peak memory {memory}", flush=True)
    if "tokens_per_s" in figures.get("jax", {}) and "tokens_per_s" in figures.get("torch", {}):
        figures["ratio_tokens_per_s_jax_over_torch"] = figures["jax"]["tokens_per_s"] / figures["torch"]["tokens_per_s"]
        print(f"[mfu] jaxtrain / PyTorch tokens/s: {figures['ratio_tokens_per_s_jax_over_torch']:.2f}")
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(figures, indent=2))
    print(f"[mfu] figures written to {args.out}")
    if any("error" in figures.get(fw, {}) for fw in args.frameworks):
        sys.exit(1)


if __name__ == "__main__":
    main()
