"""Typed run config: dataclasses, YAML presets, dotted overrides, validation.

A preset is a YAML file in `configs/` (or any path); `base: NAME` inherits from
another preset. Overrides are `section.key=value` strings whose values are
parsed as YAML scalars and then checked against the dataclass field type.
Every problem is reported before any work starts, naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
import types
import typing
from typing import Any, Literal

import yaml
from etils import epath

from jaxtrain.models.transformer import ModelConfig
from jaxtrain.train.optimizer import OptimizerConfig

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config problem, phrased as key + what is wrong + how to fix it."""


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    name: str = "stdlib_code"
    type: Literal["embedded", "files", "tfds"] = "embedded"
    path: str = ""  # glob for type=files (.txt, .md, .jsonl, .jsonl.gz, .parquet; anything else is text)
    text_field: str = "text"  # JSONL field / Parquet column / TFDS feature holding the document
    dataset: str = ""  # type=tfds: name[/config][:version], e.g. c4/en, lm1b
    split: str = "train"  # type=tfds: split to read
    data_dir: str = ""  # type=tfds: TFDS data_dir (default: TFDS's)
    content: Literal["prose", "code", "docs"] = "prose"  # picks the default quality rules
    filters: tuple[str, ...] | None = None  # quality rules to run (None: the content's defaults; []: none)
    pii: bool = True  # replace e-mail and IP addresses
    weight: float = 0.0  # mixture weight; 0 = proportional to the source's tokens (or temperature)
    max_bytes: int = 0  # cap on kept text per source (0 = no cap)


@dataclasses.dataclass(frozen=True)
class MixtureStage:
    step: int = 0  # from this training step on ...
    weights: tuple[float, ...] = ()  # ... these token shares, one per source in data.sources order


@dataclasses.dataclass(frozen=True)
class DataConfig:
    sources: tuple[SourceConfig, ...] = (
        SourceConfig(name="stdlib_code", content="code"),
        SourceConfig(name="stdlib_docs", content="docs"),
        SourceConfig(name="package_metadata", content="docs"),
    )
    min_chars: int = 200
    max_chars: int = 200_000
    min_alpha_fraction: float = 0.5  # the `alpha` rule: letters / non-space chars
    exact_dedup: bool = True  # drop documents whose normalized text repeats, across all sources
    near_dedup: bool = True  # MinHash LSH near-duplicates, across all sources
    minhash_ngram: int = 5  # word n-gram shingles
    minhash_bands: int = 14
    minhash_rows: int = 8
    decontaminate: tuple[str, ...] = ()  # globs of evaluation sets (text/JSONL): drop docs sharing an n-gram
    decontaminate_ngram: int = 13
    curate_workers: int = 1  # Beam DirectRunner worker processes (1 = in-process)
    clean_shards: int = 1  # files per source and split written by curation (raise for big corpora)
    beam_options: tuple[str, ...] = ()  # extra Beam pipeline flags, e.g. ["--runner=DataflowRunner", ...]
    mixture_temperature: float = 0.0  # > 0: weights ~ n_tokens^(1/T) for sources without a weight
    mixture_schedule: tuple[MixtureStage, ...] = ()  # later stages of the mixture, e.g. an annealing mix
    pack: bool = True  # concatenate documents into full rows; false: one document per row, padded
    eval_fraction: float = 0.02
    seq_len: int = 256
    shuffle_seed: int = 0
    num_threads: int = 0  # batches prefetched by a background thread (0 = none)
    read_threads: int = 0  # ArrayRecord read threads per source: 0 = synchronous (fastest from local disk,
    # measured), 8-16 when the token shards live on gs://


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 2048
    model_type: Literal["bpe", "unigram"] = "bpe"
    byte_fallback: bool = True
    sample_bytes: int = 4_000_000  # bound on the text the tokenizer is trained on
    model_file: str = ""  # use an existing sentencepiece .model instead of training
    special_tokens: tuple[str, ...] = ()  # user-defined pieces kept whole, e.g. ["<|endoftext|>", "<|code|>"]


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    dcn: int = 1  # data parallel across slices (multislice)
    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def shape(self) -> dict[str, int]:
        return {"dcn": self.dcn, "data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 16  # global, in sequences
    microbatches: int = 1  # gradient accumulation: the batch is processed in this many slices
    steps: int = 300
    log_every: int = 10
    z_loss: float = 0.0
    seed: int = 0
    # Stability guard (REFERENCE defaults): skip an update whose loss or grad-norm z-score over
    # the last spike_window accepted steps exceeds spike_zscore, once spike_min_history exist;
    # after max_bad_steps skipped steps in a row, roll back to the last checkpoint and skip
    # the data window; give up after max_rollbacks.
    spike_zscore: float = 6.0
    spike_window: int = 128
    spike_min_history: int = 64
    max_bad_steps: int = 8
    max_rollbacks: int = 3


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 100
    keep: int = 3  # latest N kept
    permanent_every: int = 0  # also keep every K-th step for good (0: off)
    every_minutes: float = 0.0  # also save when this much wall-clock time passed (0: off)
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 100
    max_batches: int = 20
    sample_prompt: str = "def "
    sample_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    tasks: bool = True  # score the built-in held-out tasks (next_line, last_word) at every eval
    task_examples: int = 64  # examples per built-in task
    task_files: tuple[str, ...] = ()  # extra JSONL tasks: {"context", "choices", "label"} per line


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    run_dir: str = "runs/run"
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()


# ----------------------------------------------------------------------------- parsing


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}.")
        return _build(tp, value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(choices)}.")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}.")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}.")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}.")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__}).")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__}).")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}; quote it in YAML.")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}.")  # pragma: no cover


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else ""
            raise ConfigError(f"{full}: unknown key.{hint} Valid keys here: {', '.join(names)}.")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_dict(v) for v in obj]
    return obj


def to_dict(cfg: RunConfig) -> dict:
    return _to_dict(cfg)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_path(name_or_path: str) -> pathlib.Path:
    path = epath.Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist.")
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"--config {name_or_path!r}: no such preset; available: {', '.join(available)}.")
    return candidate


def _load_yaml(path: pathlib.Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config sections.")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(_load_yaml(preset_path(str(base)), seen + (path,)), raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. model.num_layers=4.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(name_or_path: str = "demo", overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    values = _load_yaml(preset_path(name_or_path))
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section.")
        node[keys[-1]] = value
    cfg = _build(RunConfig, values)
    validate(cfg)
    return cfg


def from_dict(values: dict) -> RunConfig:
    cfg = _build(RunConfig, values)
    validate(cfg)
    return cfg


def save_config(cfg: RunConfig, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_run_config(run_dir: str | pathlib.Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = epath.Path(run_dir) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: no resolved config; is {run_dir} a jaxtrain run directory?")
    return load_config(str(path), overrides)


# ----------------------------------------------------------------------------- validation


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
