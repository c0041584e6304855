"""A minimal PyTorch GPT-2-style model (nanoGPT's shape and init), the peer of jaxtrain's GPT-2 style config
(`pos_embedding: learned, norm: layernorm, mlp: gelu, use_bias, tie_embeddings`), for the CPU benchmarks.

It takes packed rows as jaxtrain builds them: positions restart per document piece and attention stays
within a piece (segment ids) and is causal. Benchmark-only: jaxtrain itself never imports torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (t.view(B, L, self.heads, D // self.heads).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(D, 2))
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(B, L, D))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab: int, layers: int, width: int, heads: int, max_len: int, init_std: float = 0.02):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        for name, p in self.named_parameters():  # nanoGPT's init: N(0, 0.02), residual projections / sqrt(2L)
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = init_std / math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) else init_std
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        L = idx.shape[1]
        positions = torch.arange(L) if positions is None else positions
        mask = None
        if segment_ids is not None:  # causal, within the same document piece: [B, 1, L, L]
            causal = torch.ones(L, L, dtype=torch.bool).tril()
            mask = ((segment_ids[:, :, None] == segment_ids[:, None, :]) & causal)[:, None]
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x) @ self.wte.weight.T

    def optimizer(self, lr: float, betas: tuple[float, float], weight_decay: float, **kw) -> torch.optim.AdamW:
        """AdamW decaying weight matrices only (as jaxtrain's decay_mask: not embeddings, norms, biases)."""
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2 and not n.startswith(("wte", "wpe"))]
        keep = [p for n, p in self.named_parameters() if not (p.dim() >= 2 and not n.startswith(("wte", "wpe")))]
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}],
                                 lr=lr, betas=betas, **kw)
