"""FLOPs per token and MFU (chip peaks: jaxtrain.hardware) (see shared REFERENCE: PaLM appendix B).

flops_per_token = 6 * N + 12 * L * H * Q * T, with N the parameters in matmuls
(no embedding lookup, no norms or biases; the output head counted once, also
when tied). The 12*L*H*Q*T term counts full T x T attention (PaLM, nanoGPT);
MaxText halves it for causal masking. jaxtrain logs MFU with the causal
convention (`causal=True`, comparable to MaxText's published numbers) and
`flops_per_token(..., causal=False)` gives the PaLM figure.
Rematerialization is not counted: this is MFU, not HFU.
"""

from __future__ import annotations

from jaxtrain import hardware
from jaxtrain.models.transformer import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """N: parameters that take part in a matmul per token."""
    D, F, H, G = cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads
    K = cfg.resolved_head_dim
    attention = D * H * K * 2 + D * G * K * 2  # q, o; k, v
    mlp = D * F * (3 if cfg.mlp == "swiglu" else 2)
    return cfg.num_layers * (attention + mlp) + D * cfg.vocab_size  # + output head, once


def flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = True) -> float:
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * seq_len
    return 6 * matmul_params(cfg) + (attention / 2 if causal else attention)


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak of one chip, or None for an unknown device (CPU): MFU is then n/a."""
    return hardware.peak_flops(device_kind)


def mfu(flops_per_tok: float, tokens_per_s: float, n_chips: int, peak: float | None) -> float | None:
    if not peak:
        return None
    return flops_per_tok * tokens_per_s / (n_chips * peak)
