"""Hugging Face handoff: jaxtrain parameters <-> transformers checkpoints (safetensors).

Llama-style models map onto `LlamaForCausalLM` and GPT-2-style models onto
`GPT2LMHeadModel` tensor for tensor (RoPE uses the same half-split layout as
transformers' `rotate_half`, so no permutation is needed). Written with
safetensors and a plain `config.json`; transformers is not needed to export,
only to load.

Import is exact or refused: every field of a Llama `config.json` is read into
`ModelConfig`, accepted only at the value jaxtrain computes with, known not to
change the logits, or refused with an `ExportError` naming it (README: the
table under "Hand-off to Hugging Face, and back").
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from jaxtrain.errors import JaxtrainError
from jaxtrain.models.transformer import ModelConfig


class ExportError(JaxtrainError, ValueError):
    """An export or import that would not be exact: printed by the CLI as one line."""


class MissingFileError(JaxtrainError, FileNotFoundError):
    """A Hugging Face directory without a file import needs."""


class LlamaTensor(NamedTuple):
    """One tensor of a transformers Llama checkpoint and where it lives in jaxtrain's params.

    `axes` name jaxtrain's dimensions (D, H, G, K, F, V); the first `inputs` of them are the matmul's input
    side. transformers stores a Linear weight as [outputs, inputs] with each side flattened, so the tensor is
    jaxtrain's reshaped to (inputs, outputs) and transposed; inputs=0: stored as it is (norms, embedding)."""

    hf_name: str  # name in the state dict; per-layer names follow "model.layers.{i}."
    path: tuple[str, ...]  # key path in jaxtrain's pure-dict params (under "blocks" for a layer's tensors)
    axes: str
    inputs: int


# The Llama name-and-transposition table: export, import and the shape check all read it.
LLAMA_LAYER = (
    LlamaTensor("self_attn.q_proj.weight", ("attn", "wq_DxHxK"), "DHK", 1),
    LlamaTensor("self_attn.k_proj.weight", ("attn", "wk_DxGxK"), "DGK", 1),
    LlamaTensor("self_attn.v_proj.weight", ("attn", "wv_DxGxK"), "DGK", 1),
    LlamaTensor("self_attn.o_proj.weight", ("attn", "wo_HxKxD"), "HKD", 2),
    LlamaTensor("mlp.gate_proj.weight", ("mlp", "w_gate_DxF"), "DF", 1),
    LlamaTensor("mlp.up_proj.weight", ("mlp", "w_in_DxF"), "DF", 1),
    LlamaTensor("mlp.down_proj.weight", ("mlp", "w_out_FxD"), "FD", 1),
    LlamaTensor("input_layernorm.weight", ("attn_norm", "scale"), "D", 0),
    LlamaTensor("post_attention_layernorm.weight", ("mlp_norm", "scale"), "D", 0),
)
LLAMA_EMBED = LlamaTensor("model.embed_tokens.weight", ("embed_VxD",), "VD", 0)
LLAMA_HEAD = LlamaTensor("lm_head.weight", ("head_DxV",), "DV", 1)  # stored only when the embeddings are not tied
LLAMA_GLOBAL = (LLAMA_EMBED, LlamaTensor("model.norm.weight", ("final_norm", "scale"), "D", 0), LLAMA_HEAD)


def _dims(cfg: ModelConfig) -> dict[str, int]:
    return {"D": cfg.embed_dim, "H": cfg.num_heads, "G": cfg.num_kv_heads, "K": cfg.resolved_head_dim,
            "F": cfg.mlp_dim, "V": cfg.vocab_size}


def llama_layout(cfg: ModelConfig) -> list[tuple[str, LlamaTensor, int | None]]:
    """(state-dict name, table row, layer index or None) for every tensor of this config's checkpoint."""
    rows: list[tuple[str, LlamaTensor, int | None]] = [
        (t.hf_name, t, None) for t in LLAMA_GLOBAL if not (cfg.tie_embeddings and t is LLAMA_HEAD)]
    rows += [(f"model.layers.{i}.{t.hf_name}", t, i) for i in range(cfg.num_layers) for t in LLAMA_LAYER]
    return rows


def _hf_shape(t: LlamaTensor, dims: dict[str, int]) -> tuple[int, ...]:
    sizes = [dims[a] for a in t.axes]
    if not t.inputs:
        return tuple(sizes)
    return (math.prod(sizes[t.inputs:]), math.prod(sizes[: t.inputs]))


def _to_hf(t: LlamaTensor, x: np.ndarray) -> np.ndarray:
    return x.reshape(math.prod(x.shape[: t.inputs]), -1).T if t.inputs else x


def _from_hf(t: LlamaTensor, w: np.ndarray, dims: dict[str, int]) -> np.ndarray:
    return w.T.reshape([dims[a] for a in t.axes]) if t.inputs else w


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _put(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


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


def rope_parameters(cfg: ModelConfig) -> dict:
    """ModelConfig's RoPE as transformers' rope_parameters (the inverse of _rope_from_hf)."""
    kind = "default" if cfg.rope_scaling == "none" else cfg.rope_scaling
    out: dict[str, Any] = {"rope_type": kind, "rope_theta": cfg.rope_theta}
    if kind in ("linear", "llama3"):
        out["factor"] = cfg.rope_factor
    if kind == "llama3":
        out.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                   original_max_position_embeddings=cfg.rope_original_max_len)
    return out


def hf_config(cfg: ModelConfig, bos_id: int, eos_id: int) -> dict:
    """config.json for transformers; bos_id / eos_id are the run tokenizer's."""
    arch = architecture(cfg)
    if arch == "llama":
        rope = rope_parameters(cfg)
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
            "rope_parameters": rope,  # transformers 5
            # transformers 4 reads rope_scaling (and rope_theta above); 5 reads it first when present
            "rope_scaling": None if cfg.rope_scaling == "none" else {k: v for k, v in rope.items() if k != "rope_theta"},
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
        for name, t, layer in llama_layout(cfg):
            x = _get(b, t.path)[layer] if layer is not None else _get(p, t.path)
            out[name] = _to_hf(t, x)  # a tied model stores no lm_head.weight: transformers ties it on load
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


# What import does with each Llama config.json field (transformers' LlamaConfig and PreTrainedConfig).
# Read into ModelConfig:
MAPPED = {
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
    "rope_theta", "rope_scaling", "rope_parameters", "original_max_position_embeddings", "architectures",
}
# Accepted only at the value jaxtrain computes with (anything else is refused by name):
# field -> (accepted values, what jaxtrain does instead).
MUST_BE = {
    "hidden_act": (("silu", "swish"), "the gated MLP is SwiGLU (silu)"),
    "attention_bias": ((False, None), "attention projections have no biases in Llama export/import"),
    "mlp_bias": ((False, None), "MLP projections have no biases in Llama export/import"),
    "attention_dropout": ((0, 0.0, None), "jaxtrain trains without dropout"),
    "partial_rotary_factor": ((1, 1.0, None), "RoPE rotates the whole head dim"),
    "sliding_window": ((None,), "attention is full causal attention"),
    "use_sliding_window": ((False, None), "attention is full causal attention"),
    "quantization_config": ((None,), "weights are read as float32 tensors, not quantized ones"),
    "attn_logit_softcapping": ((None,), "attention logits are not soft-capped"),
    "final_logit_softcapping": ((None,), "output logits are not soft-capped"),
}
# No effect on the computed logits: bookkeeping, storage dtype, generation settings, token ids (those
# come from the tokenizer). pretraining_tp only sliced the matmuls of older transformers versions.
NO_EFFECT = {
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "pretraining_tp",
    "output_attentions", "output_hidden_states", "return_dict", "torchscript", "id2label", "label2id",
    "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "tie_encoder_decoder", "tokenizer_class", "finetuning_task", "prefix",
    "task_specific_params", "pruned_heads", "tf_legacy_loss", "use_bfloat16", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k",
    "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "layer_types",
}
# RoPE variants and the keys each may carry (besides rope_type / type / rope_theta).
ROPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}
ROPE_REFUSED = {
    "dynamic": "dynamic NTK scaling recomputes the frequencies from each input's length beyond "
               "max_position_embeddings; jaxtrain's RoPE is fixed per model",
    "yarn": "YaRN scaling is not implemented",
    "longrope": "LongRoPE scaling is not implemented",
    "su": "LongRoPE (su) scaling is not implemented",
}


def _rope_from_hf(hf: dict) -> dict:
    """ModelConfig RoPE fields from every spelling transformers reads: rope_scaling with `type` or `rope_type`
    (older files; it takes precedence, as in transformers), rope_parameters (transformers 5), rope_theta."""
    name = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    rope = dict(hf.get(name) or {})
    if not isinstance(rope, dict):
        raise ExportError(f"config.json: {name} must be an object, got {rope!r}.")
    kinds = {rope[k] for k in ("type", "rope_type") if k in rope}
    if len(kinds) > 1:
        raise ExportError(f"config.json: {name} names two RoPE types {sorted(kinds)} (type and rope_type); "
                          "keep one.")
    kind = kinds.pop() if kinds else "default"
    if kind in ROPE_REFUSED or kind not in ROPE_KEYS:
        reason = ROPE_REFUSED.get(kind, f"unknown RoPE type; jaxtrain implements {sorted(ROPE_KEYS)}")
        raise ExportError(f"config.json: {name}.rope_type {kind!r} is refused: {reason}.")
    extra = sorted(set(rope) - ROPE_KEYS[kind] - {"type", "rope_type", "rope_theta"})
    if extra:
        raise ExportError(f"config.json: {name} has {extra} for RoPE type {kind!r}; jaxtrain's {kind} RoPE reads "
                          f"only {sorted(ROPE_KEYS[kind]) or 'rope_theta'}, so it refuses rather than ignore them.")
    out = {"rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
           "rope_scaling": "none" if kind == "default" else kind}
    if kind in ("linear", "llama3"):
        if "factor" not in rope:
            raise ExportError(f"config.json: {name}.factor is required for RoPE type {kind!r}.")
        out["rope_factor"] = float(rope["factor"])
    if kind == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            if key not in rope:
                raise ExportError(f"config.json: {name}.{key} is required for RoPE type 'llama3'.")
        out["rope_low_freq_factor"] = float(rope["low_freq_factor"])
        out["rope_high_freq_factor"] = float(rope["high_freq_factor"])
        # transformers: a top-level original_max_position_embeddings wins, then the one in the dict,
        # then max_position_embeddings.
        original = hf.get("original_max_position_embeddings", rope.get("original_max_position_embeddings"))
        out["rope_original_max_len"] = int(original or hf.get("max_position_embeddings", 2048))
    return out


def model_config_from_hf(hf: dict, ignore_fields: tuple[str, ...] = (), **overrides: Any) -> ModelConfig:
    """A Llama config.json -> ModelConfig, exactly, or ExportError naming the field jaxtrain cannot honour.

    Every field is read, checked to be at the value jaxtrain computes with, known to have no effect on
    the logits, or named in ignore_fields by the user; anything else is refused."""
    if hf.get("model_type") != "llama":
        raise ExportError(f"config.json: model_type {hf.get('model_type')!r}; import supports Llama checkpoints.")
    architectures = hf.get("architectures") or ["LlamaForCausalLM"]
    if "LlamaForCausalLM" not in architectures:
        raise ExportError(f"config.json: architectures {architectures}; import reads LlamaForCausalLM checkpoints.")
    unknown = sorted(set(hf) - MAPPED - set(MUST_BE) - NO_EFFECT - set(ignore_fields))
    if unknown:
        raise ExportError(
            f"config.json: unknown field(s) {unknown}; jaxtrain cannot tell whether they change the computation. "
            f"If they do not, pass --ignore-field for each.")
    for key, (accepted, instead) in MUST_BE.items():
        if key in hf and hf[key] not in accepted and key not in ignore_fields:
            raise ExportError(f"config.json: {key}={hf[key]!r} is not supported ({instead}); a model that needs it "
                              "would import with different logits, so it is refused.")
    layer_types = hf.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise ExportError(f"config.json: layer_types {sorted(set(layer_types))}: only full_attention layers "
                          "are supported.")
    heads = hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        num_layers=hf["num_hidden_layers"],
        embed_dim=hf["hidden_size"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **_rope_from_hf(hf),
        **overrides,
    )


def llama_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a transformers LlamaForCausalLM checkpoint of this config holds, with its shape."""
    dims = _dims(cfg)
    return {name: _hf_shape(t, dims) for name, t, _ in llama_layout(cfg)}


def check_llama_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> None:
    """Refuse a checkpoint whose tensors are not exactly the ones the config implies (missing, extra, shape).

    RoPE buffers (rotary_emb.inv_freq) of older checkpoints are derived from the config and recomputed;
    a tied model's lm_head.weight may be stored and must equal the embedding."""
    expected = llama_tensor_shapes(cfg)
    present = {k for k in tensors if not k.endswith("rotary_emb.inv_freq")}
    head, embed = LLAMA_HEAD.hf_name, LLAMA_EMBED.hf_name
    if cfg.tie_embeddings and head in present:
        if not np.array_equal(np.asarray(tensors[head]), np.asarray(tensors[embed])):
            raise ExportError(f"model.safetensors: {head} differs from {embed} although config.json says "
                              "tie_word_embeddings=true.")
        present.discard(head)
    missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or extra:
        raise ExportError(f"model.safetensors: tensors missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                          f"unexpected {extra[:4]}{'...' if len(extra) > 4 else ''} for this config.json "
                          "(unexpected weights would be dropped, so they are refused).")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ExportError(f"model.safetensors: {name} has shape {tuple(tensors[name].shape)}, config.json "
                              f"implies {shape}.")


def from_hf_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> dict:
    """transformers Llama state dict -> jaxtrain pure-dict params (stacked layers)."""
    check_llama_tensors(cfg, tensors)
    dims = _dims(cfg)
    params: dict = {}
    for name, t, layer in llama_layout(cfg):
        if layer is None:
            _put(params, t.path, _from_hf(t, np.asarray(tensors[name], np.float32), dims))
    for t in LLAMA_LAYER:
        layers = [np.asarray(tensors[f"model.layers.{i}.{t.hf_name}"], np.float32) for i in range(cfg.num_layers)]
        _put(params, ("blocks", *t.path), np.stack([_from_hf(t, w, dims) for w in layers]))
    return params


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float32)
