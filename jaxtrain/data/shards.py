"""Token shards: a TFDS dataset builder that writes ArrayRecord, read back with tfds.data_source.

One split per (split, source), named `train_<source>` / `validation_<source>`,
so the loader can mix sources by weight and evaluate them one by one. Each
example is one document's tokens: BOS + ids + EOS, with the BOS and EOS ids of
the run's tokenizer (sentencepiece or Hugging Face). Per-source token and byte
counts go to `token_counts.json` beside the dataset (mixture weights and
bits-per-byte need them).
"""

from __future__ import annotations

import json
import pathlib
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxtrain.data import clean, stages
from jaxtrain.data import tokenizer as tok
from jaxtrain.errors import JaxtrainError
from jaxtrain.rundir import RunDir

DATASET_NAME = "jaxtrain_tokens"
DOC_LENGTHS_DIR = "doc_lengths"  # tokens per document in stored order, for random-access packing
ENCODE_BATCH = 256


class ShardDamaged(JaxtrainError):
    """A token shard that fails its own hash check while being read."""


def split_name(split: str, source: str) -> str:
    return f"{split}_{source}"


class TokenShards(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Documents from the cleaned JSONL files, encoded with the run's tokenizer."""

    name = DATASET_NAME
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, clean_dir: pathlib.Path, tokenizer_path: pathlib.Path, sources: list[str], **kwargs):
        self._clean_dir = epath.Path(clean_dir)
        self._tokenizer_path = epath.Path(tokenizer_path)
        self._sources = list(sources)
        self.counts: dict[str, dict[str, int]] = {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Documents tokenized with the run's tokenizer (BOS + ids + EOS).",
            features=tfds.features.FeaturesDict({"tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32)}),
        )

    # TFDS announces "Downloading and preparing dataset ..." and "... downloaded and prepared" on stdout
    # (termcolor, not logging); nothing is downloaded here and prepare.py logs its own lines, so both are off.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            split_name(split, source): self._generate_examples(split, source)
            for split in ("train", "validation")
            for source in self._sources
        }

    def _generate_examples(self, split: str, source: str) -> Iterator[tuple[str, dict]]:
        tokenizer = tok.load(self._tokenizer_path)
        counts = self.counts.setdefault(split_name(split, source), {"docs": 0, "tokens": 0, "bytes": 0})
        batch: list[dict] = []
        for path in clean.split_files(self._clean_dir, source, split):
            with path.open(encoding="utf-8") as f:
                for line in f:
                    batch.append(json.loads(line))
                    if len(batch) == ENCODE_BATCH:
                        yield from self._encode(tokenizer, batch, counts)
                        batch = []
        yield from self._encode(tokenizer, batch, counts)

    @staticmethod
    def _encode(tokenizer: tok.Tokenizer, batch: list[dict], counts: dict) -> Iterator[tuple[str, dict]]:
        if not batch:
            return
        ids = tokenizer.encode_batch([r["text"] for r in batch])  # parallel in native code
        for record, doc_ids in zip(batch, ids):
            tokens = np.asarray([tokenizer.bos_id, *doc_ids, tokenizer.eos_id], dtype=np.int32)
            counts["docs"] += 1
            counts["tokens"] += len(tokens) - 1  # predicted tokens: all but the leading BOS
            counts["bytes"] += len(record["text"].encode("utf-8"))
            yield record["id"], {"tokens": tokens}


def build_shards(run: RunDir, sources: list[str], data_dir: epath.Path | None = None) -> dict:
    """Encode the run's clean corpus with its tokenizer; write the shards and token_counts.json into
    data_dir (default: the run's tfds directory; the shards stage passes its staging directory)."""
    run = RunDir(run)
    data_dir = epath.Path(data_dir or run.tfds)
    tfds.disable_progress_bar()  # our own log lines report progress
    builder = TokenShards(
        clean_dir=run.clean,
        tokenizer_path=run.tokenizer,
        sources=sources,
        data_dir=str(data_dir),
        file_format="array_record",
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
    for split in ("train", "validation"):  # TFDS decides the stored order, so the lengths are read back once
        for source in sources:
            _save_doc_lengths(data_dir, split, source)
    stages.fault_point("shards", "tfds_written")  # shards on disk, token_counts.json not yet
    (data_dir / run.token_counts.name).write_text(json.dumps(builder.counts, indent=2))
    return builder.counts


def data_source(run: RunDir, split: str, source: str):
    """Random-access ArrayRecord source for one split of one source."""
    return _data_source(RunDir(run).tfds, split, source)


def _data_source(data_dir: epath.Path, split: str, source: str):
    return tfds.data_source(DATASET_NAME, split=split_name(split, source), data_dir=str(data_dir))


def _scan_doc_lengths(data_dir: epath.Path, split: str, source: str) -> np.ndarray:
    src = _data_source(data_dir, split, source)
    return np.asarray([len(src[i]["tokens"]) for i in range(len(src))], dtype=np.int32)


def _doc_lengths_file(data_dir: epath.Path, split: str, source: str) -> epath.Path:
    """Beside the shards (RunDir.doc_lengths names it for a published run)."""
    return epath.Path(data_dir) / DOC_LENGTHS_DIR / f"{split_name(split, source)}.npy"


def _save_doc_lengths(data_dir: epath.Path, split: str, source: str) -> None:
    path = _doc_lengths_file(data_dir, split, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.save(f, _scan_doc_lengths(data_dir, split, source))


def doc_lengths(run: RunDir, split: str, source: str) -> np.ndarray:
    """Tokens of every document of a split, in stored order (read back from the shards if never recorded)."""
    path = RunDir(run).doc_lengths(split_name(split, source))
    if not path.exists():  # shards written by an older jaxtrain
        return _scan_doc_lengths(RunDir(run).tfds, split, source)
    with path.open("rb") as f:
        return np.load(f)


def token_counts(run: RunDir) -> dict:
    """Per split: documents, predicted tokens and UTF-8 bytes, recorded when the shards were written."""
    return json.loads(RunDir(run).token_counts.read_text())
