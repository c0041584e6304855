"""Config checks: every error names the key, the value and what to do, before any work starts."""

from __future__ import annotations

from jaxtrain.config import ConfigError, RunConfig


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: RunConfig, num_devices: int | None = None) -> None:
    """Impossible combinations; with num_devices, also the mesh against the hardware."""
    m, d, t, mesh = cfg.model, cfg.data, cfg.train, cfg.mesh
    for key in ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads", "mlp_dim", "max_seq_len"):
        _check(getattr(m, key) > 0, f"model.{key}: must be positive, got {getattr(m, key)}.")
    _check(
        m.num_heads % m.num_kv_heads == 0,
        f"model.num_kv_heads: {m.num_kv_heads} must divide model.num_heads={m.num_heads}.",
    )
    _check(
        m.head_dim > 0 or m.embed_dim % m.num_heads == 0,
        f"model.embed_dim: {m.embed_dim} is not divisible by model.num_heads={m.num_heads}; set model.head_dim.",
    )
    _check(m.pos_embedding != "rope" or m.resolved_head_dim % 2 == 0, "model.head_dim: RoPE needs an even head dim.")
    _check(d.seq_len <= m.max_seq_len, f"data.seq_len: {d.seq_len} exceeds model.max_seq_len={m.max_seq_len}.")
    _check(
        cfg.tokenizer.vocab_size == m.vocab_size or bool(cfg.tokenizer.model_file),
        f"tokenizer.vocab_size: {cfg.tokenizer.vocab_size} differs from model.vocab_size={m.vocab_size}; "
        "set both to the same value.",
    )
    _check(0.0 < d.eval_fraction < 0.5, f"data.eval_fraction: {d.eval_fraction} must be in (0, 0.5).")
    _check(len(d.sources) > 0, "data.sources: at least one source is required.")
    names = [s.name for s in d.sources]
    _check(len(set(names)) == len(names), f"data.sources: names must be unique, got {names}.")
    for i, s in enumerate(d.sources):
        _check(s.name.isidentifier(), f"data.sources[{i}].name: {s.name!r} must be a valid identifier.")
        _check(s.weight >= 0, f"data.sources[{i}].weight: must be >= 0, got {s.weight}.")
        if s.filters is not None:
            from jaxtrain.data.filters import ALL_RULES

            bad = [f for f in s.filters if f not in ALL_RULES]
            _check(not bad, f"data.sources[{i}].filters: unknown rule(s) {bad}; choose from {list(ALL_RULES)} or [] for none.")
        if s.type == "files":
            _check(bool(s.path), f"data.sources[{i}].path: a glob is required for type=files.")
        elif s.type == "tfds":
            _check(bool(s.dataset), f"data.sources[{i}].dataset: a TFDS name (e.g. c4/en, lm1b) is required for type=tfds.")
        else:
            from jaxtrain.data.corpus import EMBEDDED_SOURCES

            _check(
                s.name in EMBEDDED_SOURCES,
                f"data.sources[{i}].name: {s.name!r} is not an embedded source; use one of "
                f"{list(EMBEDDED_SOURCES)} or set type=files with a path.",
            )
    _check(d.minhash_bands * d.minhash_rows <= 1024 and d.minhash_bands > 0 and d.minhash_rows > 0,
           f"data.minhash_bands x data.minhash_rows: {d.minhash_bands} x {d.minhash_rows} must be positive, <= 1024 hashes.")
    _check(d.mixture_temperature >= 0, f"data.mixture_temperature: must be >= 0 (0 = off), got {d.mixture_temperature}.")
    for k, stage in enumerate(d.mixture_schedule):
        previous = d.mixture_schedule[k - 1].step if k else 0
        _check(stage.step > previous, f"data.mixture_schedule[{k}].step: {stage.step} must be > {previous} (steps increase).")
        _check(len(stage.weights) == len(d.sources) and all(w >= 0 for w in stage.weights) and sum(stage.weights) > 0,
               f"data.mixture_schedule[{k}].weights: {list(stage.weights)} needs one weight >= 0 per source "
               f"({[s.name for s in d.sources]}), not all zero.")
    _check(d.curate_workers > 0, f"data.curate_workers: must be positive, got {d.curate_workers}.")
    _check(0 < d.clean_shards <= 99999, f"data.clean_shards: must be in 1..99999, got {d.clean_shards}.")
    _check(t.steps > 0, f"train.steps: must be positive, got {t.steps}.")
    _check(t.batch_size > 0, f"train.batch_size: must be positive, got {t.batch_size}.")
    _check(t.log_every > 0, f"train.log_every: must be positive, got {t.log_every}.")
    _check(t.microbatches > 0, f"train.microbatches: must be positive, got {t.microbatches}.")
    _check(
        t.batch_size % t.microbatches == 0,
        f"train.microbatches: {t.microbatches} must divide train.batch_size={t.batch_size}.",
    )
    _check(cfg.checkpoint.every_steps > 0, "checkpoint.every_steps: must be positive.")
    _check(cfg.checkpoint.keep > 0, "checkpoint.keep: must be positive.")
    _check(cfg.checkpoint.permanent_every >= 0, "checkpoint.permanent_every: must be >= 0 (0 = off).")
    _check(cfg.checkpoint.every_minutes >= 0, "checkpoint.every_minutes: must be >= 0 (0 = off).")
    _check(t.spike_window > 0 and t.spike_min_history <= t.spike_window,
           f"train.spike_min_history: {t.spike_min_history} must be <= train.spike_window={t.spike_window}.")
    _check(t.max_bad_steps > 0, "train.max_bad_steps: must be positive.")
    _check(cfg.eval.every_steps > 0, "eval.every_steps: must be positive.")
    for axis, size in mesh.shape().items():
        _check(size == -1 or size > 0, f"mesh.{axis}: must be positive or -1 (fill), got {size}.")
    if mesh.tensor > 0:
        _check(
            m.num_heads % mesh.tensor == 0,
            f"mesh.tensor: {mesh.tensor} must divide model.num_heads={m.num_heads}; "
            "pick a tensor size that divides the heads.",
        )
        _check(
            m.mlp_dim % mesh.tensor == 0,
            f"mesh.tensor: {mesh.tensor} must divide model.mlp_dim={m.mlp_dim}.",
        )
        _check(
            m.vocab_size % mesh.tensor == 0,
            f"mesh.tensor: {mesh.tensor} must divide model.vocab_size={m.vocab_size}; pad the vocabulary "
            f"(e.g. model.vocab_size={-(-m.vocab_size // 128) * 128}) or use mesh.tensor=1.",
        )
    if num_devices is not None:
        from jaxtrain.parallel.mesh import MeshError, resolve_mesh_shape

        try:
            shape = resolve_mesh_shape(mesh.shape(), num_devices)
        except MeshError as e:
            raise ConfigError(str(e)) from e
        dp = shape["dcn"] * shape["data"] * shape["fsdp"]
        _check(
            t.batch_size % dp == 0,
            f"train.batch_size: {t.batch_size} is not divisible by the data-parallel size "
            f"{dp} (mesh.dcn={shape['dcn']} x mesh.data={shape['data']} x mesh.fsdp={shape['fsdp']}); "
            f"use a multiple of {dp}.",
        )
        _check(
            (t.batch_size // dp) % t.microbatches == 0,
            f"train.microbatches: {t.microbatches} must divide the per-replica batch {t.batch_size // dp}.",
        )
        for name, dim in (("embed_dim", m.embed_dim),):
            _check(dim % shape["fsdp"] == 0, f"model.{name}: {dim} must be divisible by mesh.fsdp={shape['fsdp']}.")
