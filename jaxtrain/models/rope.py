"""Rotary position embedding (RoPE) and its context-extension scalings.

`rope_frequencies` gives the K/2 inverse frequencies, a constant of the compiled program: plain RoPE,
"linear" (position interpolation: every frequency divided by the factor) or "llama3" (Llama 3.1/3.2:
long wavelengths divided by the factor, short ones kept, a smooth ramp between). `rope` rotates the
first and second halves of each head (the Llama / transformers `rotate_half` layout).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def rope_frequencies(head_dim: int, theta: float, scaling: str = "none", factor: float = 1.0,
                     low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                     original_max_len: int = 8192) -> np.ndarray:
    """The head_dim/2 rotary inverse frequencies, with the context-extension scaling.

    Computed in float32 operation for operation as Meta's Llama reference and transformers do
    (`_compute_default_rope_parameters`, `_compute_linear_scaling_rope_parameters`,
    `_compute_llama3_parameters`): at positions past 10^4 a last-bit difference in one frequency
    already shows in the logits.
    """
    f32 = np.float32
    inv_freq = f32(1.0) / (f32(theta) ** (np.arange(0, head_dim, 2).astype(f32) / f32(head_dim)))
    if scaling == "linear":
        inv_freq = inv_freq / f32(factor)
    elif scaling == "llama3":
        factor, low, high, old_len = f32(factor), f32(low_freq_factor), f32(high_freq_factor), f32(original_max_len)
        wavelen = f32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)  # long wavelengths: stretched
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (f32(1) - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = np.where(medium, smoothed, scaled)
    elif scaling != "none":
        raise ValueError(f"unknown RoPE scaling {scaling!r}")
    return inv_freq.astype(f32)


def rope(x_BxLxNxK: jax.Array, positions_BxL: jax.Array, inv_freq_K2: np.ndarray | jax.Array) -> jax.Array:
    """Rotary embedding on the first and second halves of the head dim (Llama layout)."""
    angle_BxLxK2 = positions_BxL[..., None].astype(jnp.float32) * jnp.asarray(inv_freq_K2, jnp.float32)
    sin = jnp.sin(angle_BxLxK2)[:, :, None, :]
    cos = jnp.cos(angle_BxLxK2)[:, :, None, :]
    x1, x2 = jnp.split(x_BxLxNxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxNxK.dtype)
