"""SentencePiece tokenizer: train on a bounded, source-balanced sample of the cleaned corpus.

Normalization is the identity and whitespace is kept, so code indentation
survives a round trip; byte fallback means no input is ever <unk>.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import pathlib
import tempfile
from typing import Iterator

import sentencepiece as spm
from etils import epath

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MODEL_NAME = "tokenizer.model"


def _lines(paths: list[pathlib.Path], sample_bytes: int) -> Iterator[str]:
    """Round-robin over sources so a large source cannot crowd out a small one."""
    budget_per_source = max(sample_bytes // max(len(paths), 1), 1)

    def from_file(path: pathlib.Path) -> Iterator[str]:
        used = 0
        with epath.Path(path).open(encoding="utf-8") as f:
            for record in map(json.loads, f):
                for line in record["text"].split("\n"):
                    if line.strip():
                        used += len(line) + 1
                        yield line
                if used >= budget_per_source:
                    return

    iterators = [from_file(p) for p in paths]
    for group in itertools.zip_longest(*iterators):
        for line in group:
            if line is not None:
                yield line


def train_tokenizer(
    train_files: list[pathlib.Path],
    out_dir: pathlib.Path,
    vocab_size: int,
    model_type: str = "bpe",
    byte_fallback: bool = True,
    sample_bytes: int = 4_000_000,
    num_threads: int = 2,
    special_tokens: tuple[str, ...] = (),
) -> pathlib.Path:
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # sentencepiece writes local files only; out_dir may be gs://
        prefix = pathlib.Path(tmp) / "tokenizer"
        _train(train_files, prefix, vocab_size, model_type, byte_fallback, sample_bytes, num_threads, special_tokens)
        for suffix in (".model", ".vocab"):
            (out_dir / f"tokenizer{suffix}").write_bytes(prefix.with_suffix(suffix).read_bytes())
    return out_dir / MODEL_NAME


def _train(train_files, prefix, vocab_size, model_type, byte_fallback, sample_bytes, num_threads, special_tokens) -> None:
    spm.SentencePieceTrainer.train(
        user_defined_symbols=list(special_tokens),
        sentence_iterator=_lines(train_files, sample_bytes),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=byte_fallback,
        character_coverage=0.9995,
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=16384,
        num_threads=num_threads,
        minloglevel=2,
    )


def install_tokenizer(model_file: str | pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    """Copy a user-supplied .model into the run; refuse one whose special ids differ."""
    src = epath.Path(model_file)
    if not src.exists():
        raise FileNotFoundError(f"tokenizer.model_file: {src} does not exist.")
    sp = load(src)
    if sp.bos_id() < 0 or sp.eos_id() < 0:
        raise ValueError(f"tokenizer.model_file: {src} has no BOS/EOS pieces; jaxtrain needs both.")
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / MODEL_NAME
    dst.write_bytes(src.read_bytes())
    return dst


def load(path: str | pathlib.Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=epath.Path(path).read_bytes())


def fingerprint(path: str | pathlib.Path) -> str:
    """Content hash, recorded with checkpoints so a model is never paired with the wrong tokenizer."""
    return hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()[:16]
