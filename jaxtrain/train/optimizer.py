"""AdamW with linear warmup and cosine decay, built from optax pieces."""

from __future__ import annotations

import jax
import optax

from jaxtrain.config import OptimizerConfig


def lr_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(total_steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


def decay_mask(params) -> object:
    """Decay weight matrices only: not embeddings, norms or biases (OLMo / PaLM practice).

    Decided by parameter name (`w*` projections and the untied output head), not by
    rank, because stacked layers give norm scales a leading layer axis.
    """

    def keep(path, leaf) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        return name.startswith("w") or name == "head_DxV"

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    chain = []
    if cfg.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip))
    chain.append(
        optax.adamw(
            learning_rate=lr_schedule(cfg, total_steps),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*chain)
