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


def validate(cfg: RunConfig, num_devices: int | None = None) -> None:
    """Refuse a bad config before any work starts (the checks live in jaxtrain.validation)."""
    from jaxtrain.validation import validate as _validate

    _validate(cfg, num_devices)
