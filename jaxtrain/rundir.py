"""The run directory layout, named once (README: "Run directory layout").

Every stage finds its inputs and outputs through these attributes, so the
layout lives in one place. The root may be local or `gs://...` (etils.epath).
"""

from __future__ import annotations

import dataclasses
import os

from etils import epath

# Tokenizer file names: those of Hugging Face model directories, so a run's tokenizer/ reads like one.
SENTENCEPIECE_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"  # names the special tokens of a tokenizer.json
# The files beside a tokenizer.json that name its special tokens (the older special_tokens_map.json second).
HF_TOKENIZER_SIDE_FILES = (HF_TOKENIZER_CONFIG, "special_tokens_map.json")


@dataclasses.dataclass(frozen=True)
class RunDir:
    root: epath.Path

    def __init__(self, root: "str | os.PathLike | RunDir"):
        object.__setattr__(self, "root", root.root if isinstance(root, RunDir) else epath.Path(root))

    def __str__(self) -> str:
        return str(self.root)

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    @property
    def config(self) -> epath.Path:
        """The resolved config of the run, recorded by the first command (jaxtrain.runconfig)."""
        return self.root / "config.yaml"

    @property
    def data(self) -> epath.Path:
        """Everything derived from the sources: clean/ and tfds/."""
        return self.root / "data"

    @property
    def clean(self) -> epath.Path:
        """Curated documents per source and split (JSONL), ledger, report.{json,md,png}."""
        return self.data / "clean"

    @property
    def curation_report(self) -> epath.Path:
        return self.clean / "report.json"

    @property
    def curation_inputs(self) -> epath.Path:
        """What curation read: each input file's path, size and sha256 (data.provenance), the chain's first link."""
        return self.clean / "inputs.json"

    @property
    def base_model(self) -> epath.Path:
        """What `import-hf` started this run from (export.handoff.base_model_record)."""
        return self.root / "base_model.json"

    @property
    def tfds(self) -> epath.Path:
        """TFDS data_dir of the ArrayRecord token shards."""
        return self.data / "tfds"

    @property
    def token_counts(self) -> epath.Path:
        return self.tfds / "token_counts.json"

    def doc_lengths(self, split: str) -> epath.Path:
        """Tokens per document of one token-shard split, in stored order (for random-access packing)."""
        return self.tfds / "doc_lengths" / f"{split}.npy"  # (data.shards.DOC_LENGTHS_DIR)

    @property
    def tokenizer_dir(self) -> epath.Path:
        """tokenizer.model (sentencepiece), or tokenizer.json + tokenizer_config.json (Hugging Face tokenizers)."""
        return self.root / "tokenizer"

    @property
    def tokenizer(self) -> epath.Path:
        """The run's tokenizer file: tokenizer.json when the run brought a Hugging Face tokenizer, else
        tokenizer.model (also the path a new sentencepiece model is trained to)."""
        hf = self.tokenizer_dir / HF_TOKENIZER_FILE
        return hf if hf.exists() else self.tokenizer_dir / SENTENCEPIECE_FILE

    def stage_dir(self, stage: str) -> epath.Path:
        """The directory a data stage builds and publishes as a whole (see jaxtrain.data.stages)."""
        return {"curation": self.clean, "tokenizer": self.tokenizer_dir, "shards": self.tfds, "tasks": self.tasks}[stage]

    def stage_marker(self, stage: str) -> epath.Path:
        """Written last by a stage: its inputs and output digest. No marker: the stage is redone."""
        return self.stage_dir(stage) / "_COMPLETE.json"

    def staging_dir(self, stage: str) -> epath.Path:
        """Where a stage is built before it replaces stage_dir with one rename."""
        final = self.stage_dir(stage)
        return final.parent / f"{final.name}.partial"

    @property
    def writer_lock(self) -> epath.Path:
        """One writer per run directory (jaxtrain.runlock): a file lock here, or a lease object on gs://."""
        return self.root / "writer.lock"

    @property
    def logs(self) -> epath.Path:
        """Tracebacks of failed commands (the command line prints one line and the log's path)."""
        return self.root / "logs"

    @property
    def checkpoints(self) -> epath.Path:
        return self.root / "checkpoints"

    def set_aside(self, reason: str) -> epath.Path:
        """Where checkpoints moved out of the run's way go: checkpoints.corrupt/, checkpoints.abandoned/."""
        return self.root / f"checkpoints.{reason}"

    @property
    def tasks(self) -> epath.Path:
        """Downstream tasks built from held-out text (JSONL)."""
        return self.root / "tasks"

    @property
    def metrics(self) -> epath.Path:
        return self.root / "metrics.jsonl"

    @property
    def evals(self) -> epath.Path:
        return self.root / "evals.jsonl"

    @property
    def eval_plot(self) -> epath.Path:
        return self.root / "eval.png"

    @property
    def train_plot(self) -> epath.Path:
        """Training loss, learning rate and throughput per step (train.metrics.plot_training)."""
        return self.root / "train.png"

    @property
    def tensorboard(self) -> epath.Path:
        """TensorBoard events, and jax.profiler traces under plugins/profile/ (the Profile tab reads them)."""
        return self.root / "tensorboard"

    @property
    def wandb_run_id(self) -> epath.Path:
        """The Weights & Biases run id of this run, kept so a resumed run logs into the same W&B run."""
        return self.root / "wandb_run_id"

    @property
    def wandb_dir(self) -> epath.Path:
        """Where wandb keeps its local files (it adds a wandb/ folder inside; offline runs stay there)."""
        return self.root

    @property
    def is_remote(self) -> bool:
        return "://" in str(self.root)
