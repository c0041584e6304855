"""The run config: sections composed into `RunConfig`, YAML presets, dotted overrides.

Each section checks its own fields when it is built (`__post_init__`), where
the facts live: `ModelConfig` in `jaxtrain.models`, `MeshConfig` in
`jaxtrain.parallel.mesh`, the data and tokenizer sections in
`jaxtrain.data.config`, the training sections here; `RunConfig` adds the checks
that span sections. Checks that need the device count run once, when the mesh
is built (`jaxtrain.parallel.mesh.build_mesh`). A config that loads is valid:
there is no separate validation pass.

A preset is a YAML file in `configs/` (or any path); `base: NAME` inherits from
another preset. Overrides are `section.key=value` strings.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Literal

import jax.numpy as jnp
from etils import epath

from jaxtrain import yamlconf
from jaxtrain.data.config import DataConfig, MixtureStage, SourceConfig, TokenizerConfig
from jaxtrain.errors import ConfigError, check
from jaxtrain.models.attention import check_seq_len
from jaxtrain.models.transformer import ModelConfig
from jaxtrain.parallel.mesh import MeshConfig, check_divisible
from jaxtrain.rundir import RunDir

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"

__all__ = [
    "CONFIG_DIR", "CheckpointConfig", "ConfigError", "DataConfig", "EvalConfig", "LogConfig", "MeshConfig",
    "MixtureStage",
    "ModelConfig", "OptimizerConfig", "RunConfig", "SourceConfig", "TokenizerConfig", "TrainConfig", "from_dict",
    "load_config", "load_run_config", "preset_path", "save_config", "to_dict",
]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 3e-3  # peak; small models tolerate more than the 3e-4 of 1B-scale runs
    min_lr_ratio: float = 0.1  # the floor the decay ends at, as a fraction of the peak (Chinchilla: 10x decay)
    warmup_steps: int = 50  # linear warmup from 0
    schedule: Literal["cosine", "wsd"] = "cosine"  # wsd = warmup, stable, decay: extendable (train/optimizer.py)
    decay_steps: int = 0  # cosine: its horizon (0 = train.steps); wsd: the final decay's length (0 = fraction)
    decay_fraction: float = 0.2  # wsd: the last 20% of train.steps decay (MiniCPM, DeepSeek: 10-20%)
    weight_decay: float = 0.1  # AdamW, on weight matrices only (see train.optimizer.decay_mask)
    b1: float = 0.9
    b2: float = 0.95  # lower than Adam's 0.999: steadier on loss spikes at LM scale (GPT-3, Llama)
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clipping (0 = off)

    def __post_init__(self) -> None:
        check(self.learning_rate > 0, f"optimizer.learning_rate: must be positive, got {self.learning_rate}.")
        check(0 <= self.min_lr_ratio <= 1, f"optimizer.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}.")
        check(self.warmup_steps >= 0, f"optimizer.warmup_steps: must be >= 0, got {self.warmup_steps}.")
        check(self.grad_clip >= 0, f"optimizer.grad_clip: must be >= 0 (0 = off), got {self.grad_clip}.")
        check(self.decay_steps >= 0, f"optimizer.decay_steps: must be >= 0 (0 = default), got {self.decay_steps}.")
        check(0 < self.decay_fraction <= 1, f"optimizer.decay_fraction: must be in (0, 1], got {self.decay_fraction}.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 16  # global, in sequences
    microbatches: int = 1  # gradient accumulation: the batch is processed in this many slices
    steps: int = 300
    log_every: int = 10
    z_loss: float = 0.0  # PaLM's z-loss weight (1e-4 there; OLMo 2 uses 1e-5)
    # Cross-entropy in slices of this many positions (jaxtrain.train.loss): at most batch x 256 x
    # vocab float32 logits exist at once (1 GiB for llama-1b's 128k vocabulary at 8 rows per chip,
    # against 8.4 GiB whole), and a slice is still a large matmul. 0: the whole sequence at once.
    loss_chunk: int = 256
    seed: int = 0
    # Stability guard (train/guard.py; REFERENCE defaults for z, window and history): skip an update
    # whose loss or gradient norm is not finite, or whose robust z-score over the last spike_window
    # steps exceeds spike_zscore while also exceeding the median by the relative margin, once
    # spike_min_history values exist after the warm-up. After max_bad_steps skipped steps in a row,
    # roll back to the last checkpoint and skip the data window; give up after max_rollbacks.
    spike_zscore: float = 6.0
    spike_window: int = 128
    spike_min_history: int = 64
    spike_loss_margin: float = 0.2  # healthy batch-to-batch swings stay well under 20% of the median loss
    spike_grad_margin: float = 1.0  # ... and gradient norms under twice their median
    max_bad_steps: int = 8
    max_rollbacks: int = 3

    def __post_init__(self) -> None:
        check(self.steps > 0, f"train.steps: must be positive, got {self.steps}.")
        check(self.batch_size > 0, f"train.batch_size: must be positive, got {self.batch_size}.")
        check(self.log_every > 0, f"train.log_every: must be positive, got {self.log_every}.")
        check(self.microbatches > 0, f"train.microbatches: must be positive, got {self.microbatches}.")
        check(self.batch_size % self.microbatches == 0,
              f"train.microbatches: {self.microbatches} must divide train.batch_size={self.batch_size}.")
        check(self.spike_window > 0 and self.spike_min_history <= self.spike_window,
              f"train.spike_min_history: {self.spike_min_history} must be <= train.spike_window={self.spike_window}.")
        check(self.max_bad_steps > 0, "train.max_bad_steps: must be positive.")
        check(self.spike_loss_margin >= 0 and self.spike_grad_margin >= 0,
              "train.spike_loss_margin / train.spike_grad_margin: must be >= 0 (0 = z-score alone).")
        check(self.loss_chunk >= 0, f"train.loss_chunk: must be >= 0 (0 = whole sequence), got {self.loss_chunk}.")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 100
    keep: int = 3  # latest N kept
    permanent_every: int = 0  # also keep every K-th step for good (0: off)
    every_minutes: float = 0.0  # also save when this much wall-clock time passed (0: off)
    async_save: bool = True

    def __post_init__(self) -> None:
        check(self.every_steps > 0, "checkpoint.every_steps: must be positive.")
        check(self.keep > 0, "checkpoint.keep: must be positive.")
        check(self.permanent_every >= 0, "checkpoint.permanent_every: must be >= 0 (0 = off).")
        check(self.every_minutes >= 0, "checkpoint.every_minutes: must be >= 0 (0 = off).")


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

    def __post_init__(self) -> None:
        check(self.every_steps > 0, "eval.every_steps: must be positive.")


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """Where metrics go besides metrics.jsonl and TensorBoard, and the profiler switch."""

    wandb: bool = False  # also log to Weights & Biases (pip install 'jaxtrain[wandb]'); off: no account needed
    wandb_project: str = "jaxtrain"
    wandb_entity: str = ""  # team or user; "" = the logged-in user's default
    wandb_mode: Literal["online", "offline"] = "online"  # offline: files under RUN_DIR/wandb, `wandb sync` later
    profile_steps: int = 0  # trace this many training steps with jax.profiler (0 = off); 3-5 show the steady state
    profile_skip_steps: int = 5  # steps of this invocation before the trace: compilation and warm-up stay out

    def __post_init__(self) -> None:
        check(self.profile_steps >= 0, f"log.profile_steps: must be >= 0 (0 = off), got {self.profile_steps}.")
        check(self.profile_skip_steps >= 1, f"log.profile_skip_steps: must be >= 1 (the first step compiles), got "
              f"{self.profile_skip_steps}.")
        check(not self.wandb or bool(self.wandb_project), "log.wandb_project: a project name is required with "
              "log.wandb=true.")


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
    log: LogConfig = LogConfig()

    def __post_init__(self) -> None:
        """Checks that span sections; each section has already checked its own fields."""
        m, d = self.model, self.data
        check(d.seq_len <= m.max_seq_len, f"data.seq_len: {d.seq_len} exceeds model.max_seq_len={m.max_seq_len}.")
        check(self.tokenizer.vocab_size == m.vocab_size or bool(self.tokenizer.model_file),
              f"tokenizer.vocab_size: {self.tokenizer.vocab_size} differs from model.vocab_size={m.vocab_size}; "
              "set both to the same value.")
        # Low-precision master weights lose small updates (an AdamW step is often below bfloat16's resolution of
        # the weight) and the optimizer state is float32 by construction: mixed precision is model.dtype.
        check(jnp.dtype(m.param_dtype) == jnp.float32,
              f"model.param_dtype: {m.param_dtype} master weights are not supported for training (updates below the "
              "weights' precision are lost); keep model.param_dtype=float32 and set model.dtype=bfloat16 for "
              "bfloat16 compute.")
        check_divisible(self.mesh.shape(), m.axis_sizes())  # axes of known size; the rest when the mesh is built
        check_seq_len(m.attention, d.seq_len)  # a named kernel's tiling; `auto` once the platform is known

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step: the global batch (train.batch_size sequences) of data.seq_len tokens."""
        return self.train.batch_size * self.data.seq_len


def to_dict(cfg: RunConfig) -> dict:
    return yamlconf.to_dict(cfg)


def preset_path(name_or_path: str) -> epath.Path:
    path = epath.Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist.")
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.exists() and path.is_file():
        raise ConfigError(f"--config {name_or_path!r}: the file exists but a config file must end in .yaml or .yml; "
                          f"rename it to {path.with_suffix('.yaml').name}.")
    if not candidate.exists():
        available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"--config {name_or_path!r}: no such preset; available: {', '.join(available)}.")
    return epath.Path(candidate)


def load_config(name_or_path: str = "demo", overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    values = yamlconf.load_yaml(preset_path(name_or_path), preset_path)
    return from_dict(yamlconf.apply_overrides(values, overrides))


def from_dict(values: dict) -> RunConfig:
    return yamlconf.build(RunConfig, values)


def save_config(cfg: RunConfig, path: pathlib.Path) -> None:
    """Write the resolved config in one step: a local file through a rename (a reader never sees half
    of it), a gs:// object directly (object writes are atomic)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "://" in str(path):
        path.write_text(yamlconf.dump(cfg))
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_text(yamlconf.dump(cfg))
    partial.replace(path)


def load_run_config(run_dir: str | pathlib.Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = RunDir(run_dir).config
    if not path.exists():
        raise ConfigError(f"{path}: no resolved config; is {run_dir} a jaxtrain run directory?")
    return load_config(str(path), overrides)


