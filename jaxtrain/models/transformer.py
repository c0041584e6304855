"""A configurable decoder-only transformer in Flax NNX.

One module covers the Llama family (RoPE, RMSNorm, SwiGLU, grouped-query
attention) and the GPT-2 family (learned positions, LayerNorm, GELU). Every
parameter carries a `logical_axes` metadata tuple; `jaxtrain.parallel` maps
those names to mesh axes with one rules table, so the model never mentions a
mesh. We use our own metadata key rather than NNX's `out_sharding` because the
latter triggers eager sharding at construction, which needs a mesh in scope and
would make the model unusable in a plain notebook.

Shapes in names: B batch, L length, D model width, H query heads, G key/value
heads, K head dim, F MLP width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.errors import check
from jaxtrain.models.attention import cached_attention, dot_product_attention
from jaxtrain.models.remat import remat_policy
from jaxtrain.models.rope import rope, rope_frequencies
from jaxtrain.parallel.constraints import constrain

Array = jax.Array


def _execution(default):
    """A ModelConfig field that changes how the model runs, not what it computes or stores."""
    return dataclasses.field(default=default, metadata={"execution": True})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model, enough to build it in a notebook in two lines: what it computes and stores, and the fields
    marked `execution` (`execution_fields()`: compute dtype, attention kernel, layer scan, remat) that only
    choose how it runs, so a checkpoint restores under any values of them."""

    vocab_size: int = 2048
    num_layers: int = 4
    embed_dim: int = 256
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 0  # 0: embed_dim // num_heads
    mlp_dim: int = 1024
    max_seq_len: int = 256
    pos_embedding: Literal["rope", "learned"] = "rope"
    rope_theta: float = 10000.0
    # RoPE context extension: "linear" divides every frequency by rope_factor (position interpolation);
    # "llama3" is Llama 3.1/3.2's: low frequencies divided by rope_factor, high ones kept, a smooth ramp between.
    rope_scaling: Literal["none", "linear", "llama3"] = "none"
    rope_factor: float = 8.0  # linear/llama3 stretch (Llama 3.1: 8; Llama 3.2: 32)
    rope_low_freq_factor: float = 1.0  # llama3: wavelengths above original_len / this are fully stretched (Llama 3.1)
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths below original_len / this are kept (Llama 3.1)
    rope_original_max_len: int = 8192  # llama3: the context length the model was first trained at (Llama 3)
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = 1e-6
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    qk_norm: bool = False
    use_bias: bool = False  # biases on attention and MLP projections (GPT-2)
    tie_embeddings: bool = False
    init_std: float = 0.02
    dtype: str = _execution("float32")  # compute dtype
    param_dtype: str = "float32"  # master weights
    attention: Literal["auto", "xla", "jax", "splash", "flash"] = _execution("auto")
    attention_interpret: bool = _execution(False)  # Pallas interpret mode (tests on CPU)
    scan_layers: bool = _execution(True)  # one compiled layer body under lax.scan: flat compile time in depth
    remat: Literal["none", "full", "save_dots", "offload_dots"] = _execution("none")

    def __post_init__(self) -> None:
        for key in ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads", "mlp_dim", "max_seq_len"):
            check(getattr(self, key) > 0, f"model.{key}: must be positive, got {getattr(self, key)}.")
        check(self.num_heads % self.num_kv_heads == 0,
              f"model.num_kv_heads: {self.num_kv_heads} must divide model.num_heads={self.num_heads}.")
        check(self.head_dim > 0 or self.embed_dim % self.num_heads == 0,
              f"model.embed_dim: {self.embed_dim} is not divisible by model.num_heads={self.num_heads}; set model.head_dim.")
        check(self.pos_embedding != "rope" or self.resolved_head_dim % 2 == 0, "model.head_dim: RoPE needs an even head dim.")
        check(self.rope_theta > 0, f"model.rope_theta: must be positive, got {self.rope_theta}.")
        if self.rope_scaling != "none":
            check(self.pos_embedding == "rope", f"model.rope_scaling: {self.rope_scaling!r} needs "
                  f"model.pos_embedding=rope (got {self.pos_embedding!r}); set model.rope_scaling=none.")
            check(self.rope_factor >= 1.0, f"model.rope_factor: {self.rope_factor} must be >= 1 (how many times "
                  "longer the context becomes).")
        if self.rope_scaling == "llama3":
            check(0 < self.rope_low_freq_factor < self.rope_high_freq_factor,
                  f"model.rope_low_freq_factor: {self.rope_low_freq_factor} must be positive and below "
                  f"model.rope_high_freq_factor={self.rope_high_freq_factor}.")
            check(self.rope_original_max_len > 0,
                  f"model.rope_original_max_len: must be positive, got {self.rope_original_max_len}.")
        for key in ("dtype", "param_dtype"):
            check(_is_float_dtype(getattr(self, key)), f"model.{key}: {getattr(self, key)!r} is not a floating-point "
                  "dtype; use float32, bfloat16 or float16.")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads

    def axis_sizes(self) -> dict[str, tuple[int, str]]:
        """Size of each logical parameter axis that the mesh may shard, with the config key that sets it."""
        return {
            "heads": (self.num_heads, "model.num_heads"),
            "kv_heads": (self.num_kv_heads, "model.num_kv_heads"),
            "mlp": (self.mlp_dim, "model.mlp_dim"),
            "vocab": (self.vocab_size, "model.vocab_size"),
            "embed": (self.embed_dim, "model.embed_dim"),
        }


def execution_fields() -> frozenset[str]:
    """ModelConfig's execution-only fields: a checkpoint or an imported model keeps whatever values the run sets."""
    return frozenset(f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("execution"))


def _is_float_dtype(name: str) -> bool:
    try:
        return bool(jnp.issubdtype(jnp.dtype(name), jnp.floating))
    except TypeError:  # numpy: "data type 'bfloat6' not understood"
        return False


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], std: float, dtype) -> nnx.Param:
    value = std * jax.random.normal(rngs.params(), shape, dtype=jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=axes)


def _ones(shape: tuple[int, ...], axes: tuple[str | None, ...], dtype) -> nnx.Param:
    return nnx.Param(jnp.ones(shape, dtype), logical_axes=axes)


def _zeros(shape: tuple[int, ...], axes: tuple[str | None, ...], dtype) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, dtype), logical_axes=axes)


class Norm(nnx.Module):
    """RMSNorm or LayerNorm, computed in float32 for stability."""

    def __init__(self, dim: int, kind: str, eps: float, param_dtype):
        self.kind = kind
        self.eps = eps
        self.scale = _ones((dim,), ("norm",), param_dtype)
        self.bias = _zeros((dim,), ("norm",), param_dtype) if kind == "layernorm" else None

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        D, H, G, K = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
        pdt = jnp.dtype(cfg.param_dtype)
        std = cfg.init_std
        self.cfg = cfg
        self.wq_DxHxK = _param(rngs, (D, H, K), ("embed", "heads", "head_dim"), std, pdt)
        self.wk_DxGxK = _param(rngs, (D, G, K), ("embed", "kv_heads", "head_dim"), std, pdt)
        self.wv_DxGxK = _param(rngs, (D, G, K), ("embed", "kv_heads", "head_dim"), std, pdt)
        # Output projection scaled down with depth (GPT-2 / OLMo residual init).
        out_std = std / math.sqrt(2 * cfg.num_layers)
        self.wo_HxKxD = _param(rngs, (H, K, D), ("heads", "head_dim", "embed"), out_std, pdt)
        if cfg.use_bias:
            self.bq_HxK = _zeros((H, K), ("heads", "head_dim"), pdt)
            self.bk_GxK = _zeros((G, K), ("kv_heads", "head_dim"), pdt)
            self.bv_GxK = _zeros((G, K), ("kv_heads", "head_dim"), pdt)
            self.bo_D = _zeros((D,), ("norm",), pdt)
        else:
            self.bq_HxK = self.bk_GxK = self.bv_GxK = self.bo_D = None
        if cfg.qk_norm:
            self.q_norm = Norm(K, "rmsnorm", cfg.norm_eps, pdt)
            self.k_norm = Norm(K, "rmsnorm", cfg.norm_eps, pdt)
        else:
            self.q_norm = self.k_norm = None

    def __call__(self, x_BxLxD: Array, positions_BxL: Array, segment_ids_BxL: Array) -> Array:
        cfg = self.cfg
        q, k, v = self._qkv(x_BxLxD, positions_BxL)
        out_BxLxHxK = dot_product_attention(
            q, k, v, segment_ids_BxL, implementation=cfg.attention, interpret=cfg.attention_interpret
        )
        return self._out(out_BxLxHxK)

    def decode(self, x_BxLxD: Array, positions_BxL: Array, cache: tuple, index: Array, valid_BxS: Array):
        """Attention for incremental decoding against a key/value cache; returns (out, new cache)."""
        q, k, v = self._qkv(x_BxLxD, positions_BxL)
        out_BxLxHxK, k_all, v_all = cached_attention(q, k, v, cache[0], cache[1], index, valid_BxS)
        return self._out(out_BxLxHxK), (k_all, v_all)

    def _qkv(self, x_BxLxD: Array, positions_BxL: Array) -> tuple[Array, Array, Array]:
        cfg = self.cfg
        dt = x_BxLxD.dtype
        q = jnp.einsum("bld,dhk->blhk", x_BxLxD, self.wq_DxHxK[...].astype(dt))
        k = jnp.einsum("bld,dgk->blgk", x_BxLxD, self.wk_DxGxK[...].astype(dt))
        v = jnp.einsum("bld,dgk->blgk", x_BxLxD, self.wv_DxGxK[...].astype(dt))
        if self.bq_HxK is not None:
            q = q + self.bq_HxK[...].astype(dt)
            k = k + self.bk_GxK[...].astype(dt)
            v = v + self.bv_GxK[...].astype(dt)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if cfg.pos_embedding == "rope":
            inv_freq_K2 = rope_frequencies(cfg.resolved_head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor,
                                           cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                                           cfg.rope_original_max_len)
            q = rope(q, positions_BxL, inv_freq_K2)
            k = rope(k, positions_BxL, inv_freq_K2)
        return q, k, v

    def _out(self, out_BxLxHxK: Array) -> Array:
        dt = out_BxLxHxK.dtype
        out = jnp.einsum("blhk,hkd->bld", out_BxLxHxK, self.wo_HxKxD[...].astype(dt))
        if self.bo_D is not None:
            out = out + self.bo_D[...].astype(dt)
        return constrain(out, ("batch", "length", "embed"))


class Mlp(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        D, F = cfg.embed_dim, cfg.mlp_dim
        pdt = jnp.dtype(cfg.param_dtype)
        self.kind = cfg.mlp
        self.w_in_DxF = _param(rngs, (D, F), ("embed", "mlp"), cfg.init_std, pdt)
        self.w_gate_DxF = _param(rngs, (D, F), ("embed", "mlp"), cfg.init_std, pdt) if cfg.mlp == "swiglu" else None
        out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        self.w_out_FxD = _param(rngs, (F, D), ("mlp", "embed"), out_std, pdt)
        self.b_in_F = _zeros((F,), ("mlp",), pdt) if cfg.use_bias else None
        self.b_out_D = _zeros((D,), ("norm",), pdt) if cfg.use_bias else None

    def __call__(self, x_BxLxD: Array) -> Array:
        dt = x_BxLxD.dtype
        h_BxLxF = x_BxLxD @ self.w_in_DxF[...].astype(dt)
        if self.b_in_F is not None:
            h_BxLxF = h_BxLxF + self.b_in_F[...].astype(dt)
        if self.w_gate_DxF is not None:
            h_BxLxF = jax.nn.silu(x_BxLxD @ self.w_gate_DxF[...].astype(dt)) * h_BxLxF
        else:
            h_BxLxF = jax.nn.gelu(h_BxLxF)
        h_BxLxF = constrain(h_BxLxF, ("batch", "length", "mlp"))
        out_BxLxD = h_BxLxF @ self.w_out_FxD[...].astype(dt)
        if self.b_out_D is not None:
            out_BxLxD = out_BxLxD + self.b_out_D[...].astype(dt)
        return constrain(out_BxLxD, ("batch", "length", "embed"))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        pdt = jnp.dtype(cfg.param_dtype)
        self.attn_norm = Norm(cfg.embed_dim, cfg.norm, cfg.norm_eps, pdt)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = Norm(cfg.embed_dim, cfg.norm, cfg.norm_eps, pdt)
        self.mlp = Mlp(cfg, rngs)

    def __call__(self, x_BxLxD: Array, positions_BxL: Array, segment_ids_BxL: Array) -> Array:
        x_BxLxD = x_BxLxD + self.attn(self.attn_norm(x_BxLxD), positions_BxL, segment_ids_BxL)
        return x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD))

    def decode(self, x_BxLxD: Array, positions_BxL: Array, cache: tuple, index: Array, valid_BxS: Array):
        h, cache = self.attn.decode(self.attn_norm(x_BxLxD), positions_BxL, cache, index, valid_BxS)
        x_BxLxD = x_BxLxD + h
        return x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD)), cache


def project_logits(x_BxLxD: Array, head_DxV: Array) -> Array:
    """Float32 logits from final hidden states: the head runs in the compute dtype with float32 accumulation.

    A float32 model gets exactly the float32 product; a bfloat16 model feeds the
    matmul units bf16 operands (as PyTorch autocast and MaxText do) instead of
    running the largest matmul of a small model in float32.
    """
    logits_BxLxV = jnp.einsum("bld,dv->blv", x_BxLxD, head_DxV.astype(x_BxLxD.dtype),
                              preferred_element_type=jnp.float32)
    return constrain(logits_BxLxV, ("batch", "length", "vocab"))


class Transformer(nnx.Module):
    """Decoder-only LM: tokens_BxL -> float32 logits_BxLxV."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(cfg.param_dtype)
        self.cfg = cfg
        self.embed_VxD = _param(rngs, (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"), cfg.init_std, pdt)
        if cfg.pos_embedding == "learned":
            self.pos_embed_LxD = _param(rngs, (cfg.max_seq_len, cfg.embed_dim), (None, "embed"), cfg.init_std, pdt)
        else:
            self.pos_embed_LxD = None
        # Layers are stored stacked (leading "layers" axis) whether or not they are scanned,
        # so scan_layers and remat are pure execution choices with identical parameters.
        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(block_rngs: nnx.Rngs) -> Block:
            return Block(cfg, block_rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = Norm(cfg.embed_dim, cfg.norm, cfg.norm_eps, pdt)
        if cfg.tie_embeddings:
            self.head_DxV = None
        else:
            self.head_DxV = _param(rngs, (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"), cfg.init_std, pdt)

    def __call__(
        self,
        tokens_BxL: Array,
        positions_BxL: Array | None = None,
        segment_ids_BxL: Array | None = None,
    ) -> Array:
        B, L = tokens_BxL.shape
        if positions_BxL is None:
            positions_BxL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
        if segment_ids_BxL is None:
            segment_ids_BxL = jnp.ones((B, L), jnp.int32)
        return project_logits(self.hidden_states(tokens_BxL, positions_BxL, segment_ids_BxL), self.head_weight())

    def hidden_states(self, tokens_BxL: Array, positions_BxL: Array, segment_ids_BxL: Array) -> Array:
        """The final-normed hidden states that the output head reads (compute dtype).

        With `head_weight()` this is what a chunked loss needs instead of the full
        [B, L, V] logits (jaxtrain.train.loss).
        """
        x_BxLxD = self._embed(tokens_BxL, positions_BxL)
        x_BxLxD = self.apply_blocks(x_BxLxD, positions_BxL, segment_ids_BxL)
        return self.final_norm(x_BxLxD)

    def head_weight(self) -> Array:
        """The output head as D x V (the embedding table transposed when tied)."""
        return self.embed_VxD[...].T if self.head_DxV is None else self.head_DxV[...]

    def _embed(self, tokens_BxL: Array, positions_BxL: Array) -> Array:
        cfg = self.cfg
        dt = jnp.dtype(cfg.dtype)
        # All-gather the table before the lookup, as FSDP does for every weight: a gather
        # from a sharded table into batch-sharded activations makes the SPMD partitioner
        # replicate the whole activation instead.
        table_VxD = constrain(self.embed_VxD[...], (None, None))
        x_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0).astype(dt)
        if self.pos_embed_LxD is not None:
            x_BxLxD = x_BxLxD + jnp.take(self.pos_embed_LxD[...], positions_BxL, axis=0).astype(dt)
        return constrain(x_BxLxD, ("batch", "length", "embed"))


    def init_cache(self, batch: int, max_len: int) -> dict:
        """Empty key/value cache for `decode`: one slot per position, per layer."""
        cfg = self.cfg
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.resolved_head_dim)
        dt = jnp.dtype(cfg.dtype)
        return {
            "k": jnp.zeros(shape, dt),
            "v": jnp.zeros(shape, dt),
            "index": jnp.zeros((), jnp.int32),  # next free slot
            "valid": jnp.zeros((batch, max_len), jnp.bool_),  # slots holding real tokens (not padding)
        }

    def decode(self, tokens_BxL: Array, positions_BxL: Array, cache: dict, valid_BxL: Array | None = None):
        """Run L new tokens against the cache: (float32 logits_BxLxV, updated cache).

        Prefill passes the whole (left-padded) prompt, generation one token at a
        time; logits equal the full forward pass on the same tokens.
        """
        B, L = tokens_BxL.shape
        if valid_BxL is None:
            valid_BxL = jnp.ones((B, L), jnp.bool_)
        index = cache["index"]
        valid_BxS = jax.lax.dynamic_update_slice(cache["valid"], valid_BxL, (0, index))
        x_BxLxD = self._embed(tokens_BxL, positions_BxL)
        graphdef, stacked = nnx.split(self.blocks)

        def layer(x: Array, xs):
            layer_state, k_c, v_c = xs
            x, (k_c, v_c) = nnx.merge(graphdef, layer_state).decode(x, positions_BxL, (k_c, v_c), index, valid_BxS)
            return x, (k_c, v_c)

        x_BxLxD, (k_new, v_new) = jax.lax.scan(layer, x_BxLxD, (stacked, cache["k"], cache["v"]))
        new_cache = {"k": k_new, "v": v_new, "index": index + L, "valid": valid_BxS}
        return project_logits(self.final_norm(x_BxLxD), self.head_weight()), new_cache


    def apply_blocks(self, x_BxLxD: Array, positions_BxL: Array, segment_ids_BxL: Array) -> Array:
        graphdef, stacked = nnx.split(self.blocks)

        def layer(x: Array, layer_state) -> tuple[Array, None]:
            return nnx.merge(graphdef, layer_state)(x, positions_BxL, segment_ids_BxL), None

        policy = remat_policy(self.cfg.remat)
        if policy is not None:
            layer = jax.checkpoint(layer, policy=policy, prevent_cse=not self.cfg.scan_layers)
        if self.cfg.scan_layers:
            x_BxLxD, _ = jax.lax.scan(layer, x_BxLxD, stacked)
        else:
            for i in range(self.cfg.num_layers):
                x_BxLxD, _ = layer(x_BxLxD, jax.tree.map(lambda a, i=i: a[i], stacked))
        return x_BxLxD


def count_params(params: nnx.Module | nnx.State | dict, exclude_embeddings: bool = False) -> int:
    """Number of parameters; with exclude_embeddings, input and position embeddings are left out."""
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        if exclude_embeddings and ("embed_VxD" in name or "pos_embed_LxD" in name):
            continue
        total += math.prod(leaf.shape)
    return total
