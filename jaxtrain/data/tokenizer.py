"""SentencePiece tokenizer: train on a bounded, source-balanced sample of the cleaned corpus.

Normalization is the identity and whitespace is kept, so code indentation
survives a round trip; byte fallback means no input is ever <unk>.

Fingerprints. A run's checkpoints record `fingerprint(tokenizer.model)`, the hash of the file.
The model is written straight from memory (sentencepiece's `model_writer`), so the file holds
only the pieces and the settings (no temporary `model_prefix` path, which a file-based training
stores): training again on the same text gives the same bytes and the same fingerprint. The
hash stays a plain file hash so that tokenizers written before this (with a stored path) keep
the fingerprint their checkpoints recorded; when such a tokenizer is rebuilt and comes out the
same apart from that path, `keep_existing_if_same` keeps the existing file.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import pathlib
from typing import Iterator

import sentencepiece as spm
from etils import epath
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

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
    model = io.BytesIO()  # in memory: no temporary path stored in the model, and out_dir may be gs://
    _train(train_files, model, vocab_size, model_type, byte_fallback, sample_bytes, num_threads, special_tokens)
    (out_dir / MODEL_NAME).write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    (out_dir / "tokenizer.vocab").write_text(  # sentencepiece's .vocab layout: piece TAB score
        "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())), encoding="utf-8")
    return out_dir / MODEL_NAME


def _train(train_files, model_writer, vocab_size, model_type, byte_fallback, sample_bytes, num_threads,
           special_tokens) -> None:
    spm.SentencePieceTrainer.train(
        user_defined_symbols=list(special_tokens),
        sentence_iterator=_lines(train_files, sample_bytes),
        model_writer=model_writer,
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


def _prefix_free_model_class():
    """A ModelProto message class that knows only trainer_spec.model_prefix (the rest of the model
    round-trips as unknown fields). sentencepiece's own generated module needs protobuf gencode
    7.36, newer than the pinned runtime (6.33), so the two fields are declared here."""
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="jaxtrain_sentencepiece_prefix.proto", package="jaxtrain_spm",
                                               syntax="proto2")
    proto.message_type.add(name="TrainerSpec").field.add(
        name="model_prefix", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    proto.message_type.add(name="ModelProto").field.add(
        name="trainer_spec", number=2, type=field.TYPE_MESSAGE, type_name=".jaxtrain_spm.TrainerSpec",
        label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("jaxtrain_spm.ModelProto"))


_PrefixFreeModel = _prefix_free_model_class()


def same_model(a: bytes, b: bytes) -> bool:
    """Whether two serialized models have the same pieces and settings (a stored model_prefix aside)."""
    def canonical(data: bytes) -> bytes:
        model = _PrefixFreeModel.FromString(data)
        model.trainer_spec.ClearField("model_prefix")
        return model.SerializeToString(deterministic=True)

    return a == b or canonical(a) == canonical(b)


def keep_existing_if_same(existing: pathlib.Path, built: pathlib.Path) -> bool:
    """Replace a freshly built model by the existing file when they differ only in a stored path, so
    the fingerprint every checkpoint recorded still holds. True when it did."""
    existing, built = epath.Path(existing), epath.Path(built)
    if not existing.exists():
        return False
    old = existing.read_bytes()
    if old == built.read_bytes() or not same_model(old, built.read_bytes()):
        return False
    built.write_bytes(old)
    return True
