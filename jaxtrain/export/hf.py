"""Hugging Face handoff: jaxtrain parameters <-> transformers checkpoints (safetensors).

Llama-style models map onto `LlamaForCausalLM` and GPT-2-style models onto
`GPT2LMHeadModel` tensor for tensor (RoPE uses the same half-split layout as
transformers' `rotate_half`, so no permutation is needed). Written with
safetensors and a plain `config.json`; transformers is not needed to export,
only to load.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxtrain.models.transformer import ModelConfig


class ExportError(ValueError):
    pass


def architecture(cfg: ModelConfig) -> str:
    if cfg.pos_embedding == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu":
        if cfg.use_bias or cfg.qk_norm:
            raise ExportError("model: Llama export supports neither use_bias nor qk_norm; set both to false.")
        return "llama"
    if cfg.pos_embedding == "learned" and cfg.norm == "layernorm" and cfg.mlp == "gelu":
        if not (cfg.use_bias and cfg.tie_embeddings and cfg.num_kv_heads == cfg.num_heads):
            raise ExportError("model: GPT-2 export needs use_bias, tie_embeddings and num_kv_heads == num_heads.")
        if cfg.resolved_head_dim * cfg.num_heads != cfg.embed_dim or cfg.qk_norm:
            raise ExportError("model: GPT-2 export needs head_dim * num_heads == embed_dim and no qk_norm.")
        return "gpt2"
    raise ExportError(
        "model: no Hugging Face architecture matches; use rope+rmsnorm+swiglu (Llama) or "
        "learned+layernorm+gelu (GPT-2)."
    )


def hf_config(cfg: ModelConfig, bos_id: int = 1, eos_id: int = 2) -> dict:
    arch = architecture(cfg)
    if arch == "llama":
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.embed_dim,
            "intermediate_size": cfg.mlp_dim,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.resolved_head_dim,
            "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": cfg.tie_embeddings,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "torch_dtype": "float32",
        }
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_embd": cfg.embed_dim,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.mlp_dim,
        "n_positions": cfg.max_seq_len,
        "n_ctx": cfg.max_seq_len,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }


def to_hf_tensors(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """jaxtrain pure-dict params (stacked layers) -> transformers state dict (numpy, float32)."""
    p = _to_numpy(params)
    b = p["blocks"]
    D, H, G, K = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    out: dict[str, np.ndarray] = {}
    if architecture(cfg) == "llama":
        out["model.embed_tokens.weight"] = p["embed_VxD"]
        for i in range(cfg.num_layers):
            pre = f"model.layers.{i}."
            out[pre + "self_attn.q_proj.weight"] = b["attn"]["wq_DxHxK"][i].reshape(D, H * K).T
            out[pre + "self_attn.k_proj.weight"] = b["attn"]["wk_DxGxK"][i].reshape(D, G * K).T
            out[pre + "self_attn.v_proj.weight"] = b["attn"]["wv_DxGxK"][i].reshape(D, G * K).T
            out[pre + "self_attn.o_proj.weight"] = b["attn"]["wo_HxKxD"][i].reshape(H * K, D).T
            out[pre + "mlp.gate_proj.weight"] = b["mlp"]["w_gate_DxF"][i].T
            out[pre + "mlp.up_proj.weight"] = b["mlp"]["w_in_DxF"][i].T
            out[pre + "mlp.down_proj.weight"] = b["mlp"]["w_out_FxD"][i].T
            out[pre + "input_layernorm.weight"] = b["attn_norm"]["scale"][i]
            out[pre + "post_attention_layernorm.weight"] = b["mlp_norm"]["scale"][i]
        out["model.norm.weight"] = p["final_norm"]["scale"]
        out["lm_head.weight"] = p["embed_VxD"] if cfg.tie_embeddings else p["head_DxV"].T
    else:
        out["transformer.wte.weight"] = p["embed_VxD"]
        out["transformer.wpe.weight"] = p["pos_embed_LxD"]
        for i in range(cfg.num_layers):
            pre = f"transformer.h.{i}."
            a, m = b["attn"], b["mlp"]
            out[pre + "ln_1.weight"] = b["attn_norm"]["scale"][i]
            out[pre + "ln_1.bias"] = b["attn_norm"]["bias"][i]
            out[pre + "attn.c_attn.weight"] = np.concatenate(
                [a[w][i].reshape(D, H * K) for w in ("wq_DxHxK", "wk_DxGxK", "wv_DxGxK")], axis=1
            )
            out[pre + "attn.c_attn.bias"] = np.concatenate([a[w][i].reshape(-1) for w in ("bq_HxK", "bk_GxK", "bv_GxK")])
            out[pre + "attn.c_proj.weight"] = a["wo_HxKxD"][i].reshape(H * K, D)
            out[pre + "attn.c_proj.bias"] = a["bo_D"][i]
            out[pre + "ln_2.weight"] = b["mlp_norm"]["scale"][i]
            out[pre + "ln_2.bias"] = b["mlp_norm"]["bias"][i]
            out[pre + "mlp.c_fc.weight"] = m["w_in_DxF"][i]
            out[pre + "mlp.c_fc.bias"] = m["b_in_F"][i]
            out[pre + "mlp.c_proj.weight"] = m["w_out_FxD"][i]
            out[pre + "mlp.c_proj.bias"] = m["b_out_D"][i]
        out["transformer.ln_f.weight"] = p["final_norm"]["scale"]
        out["transformer.ln_f.bias"] = p["final_norm"]["bias"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def model_config_from_hf(hf: dict, **overrides: Any) -> ModelConfig:
    """A Llama config.json -> ModelConfig (for continued pretraining of an existing model)."""
    if hf.get("model_type") != "llama":
        raise ExportError(f"config.json: model_type {hf.get('model_type')!r}; import supports Llama checkpoints.")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ExportError("config.json: attention_bias / mlp_bias are not supported for import.")
    rope = hf.get("rope_parameters") or {}
    if (hf.get("rope_scaling") or {}).get("rope_type", "default") not in ("default", None) or rope.get(
        "rope_type", "default"
    ) != "default":
        raise ExportError("config.json: scaled RoPE (rope_scaling) is not supported for import yet.")
    heads = hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        num_layers=hf["num_hidden_layers"],
        embed_dim=hf["hidden_size"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads", heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **overrides,
    )


def from_hf_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> dict:
    """transformers Llama state dict -> jaxtrain pure-dict params (stacked layers)."""
    D, H, G, K, L = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim, cfg.num_layers

    def stack(name: str, fn) -> np.ndarray:
        return np.stack([fn(np.asarray(tensors[f"model.layers.{i}.{name}"], np.float32)) for i in range(L)])

    params = {
        "embed_VxD": np.asarray(tensors["model.embed_tokens.weight"], np.float32),
        "final_norm": {"scale": np.asarray(tensors["model.norm.weight"], np.float32)},
        "blocks": {
            "attn": {
                "wq_DxHxK": stack("self_attn.q_proj.weight", lambda w: w.T.reshape(D, H, K)),
                "wk_DxGxK": stack("self_attn.k_proj.weight", lambda w: w.T.reshape(D, G, K)),
                "wv_DxGxK": stack("self_attn.v_proj.weight", lambda w: w.T.reshape(D, G, K)),
                "wo_HxKxD": stack("self_attn.o_proj.weight", lambda w: w.T.reshape(H, K, D)),
            },
            "attn_norm": {"scale": stack("input_layernorm.weight", lambda w: w)},
            "mlp": {
                "w_gate_DxF": stack("mlp.gate_proj.weight", lambda w: w.T),
                "w_in_DxF": stack("mlp.up_proj.weight", lambda w: w.T),
                "w_out_FxD": stack("mlp.down_proj.weight", lambda w: w.T),
            },
            "mlp_norm": {"scale": stack("post_attention_layernorm.weight", lambda w: w)},
        },
    }
    if not cfg.tie_embeddings:
        params["head_DxV"] = np.asarray(tensors["lm_head.weight"], np.float32).T
    return params


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float32)
