"""Tokenizers behind one small interface: sentencepiece (trained here) and Hugging Face `tokenizer.json`.

jaxtrain trains sentencepiece BPE/unigram models: normalization is the
identity and whitespace is kept (no dummy prefix), so code indentation
survives a round trip, and byte fallback means no input is ever <unk>.
A run may instead bring a tokenizer: a sentencepiece `.model`, or a Hugging
Face `tokenizer.json` (e.g. Llama 3's byte-level BPE) read with the
`tokenizers` library, whose `tokenizer_config.json` names the BOS and EOS
tokens.

Everything that tokenizes (token shards, task scoring, lm-eval, sampling,
export) goes through `Tokenizer`: `encode` gives the ids of the text alone,
and the special-token ids (`bos_id`, `eos_id`) come from the tokenizer
itself, never from constants. A tokenizer without BOS or EOS is refused.

Fingerprints. A run's checkpoints record `fingerprint(tokenizer.model)`, the hash of the file.
The model is written straight from memory (sentencepiece's `model_writer`), so the file holds
only the pieces and the settings (no temporary `model_prefix` path, which a file-based training
stores): training again on the same text gives the same bytes and the same fingerprint. The
hash stays a plain file hash so that tokenizers written before this (with a stored path) keep
the fingerprint their checkpoints recorded; when such a tokenizer is rebuilt and comes out the
same apart from that path, `keep_existing_if_same` keeps the existing file.
"""

from __future__ import annotations

import abc
import hashlib
import io
import itertools
import json
import os
import pathlib
import re
from typing import Iterator, Sequence

import sentencepiece as spm
import tokenizers
from etils import epath
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from jaxtrain.errors import ConfigError, JaxtrainError
from jaxtrain.rundir import HF_TOKENIZER_CONFIG, HF_TOKENIZER_FILE, HF_TOKENIZER_SIDE_FILES, SENTENCEPIECE_FILE

# The ids jaxtrain gives the special pieces when it trains a sentencepiece model (Llama 2's layout).
# Only the trainer uses them: a tokenizer a run brings has its own, read from the tokenizer.
TRAINED_SPECIAL_IDS = {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3}
MODEL_NAME = SENTENCEPIECE_FILE
# sentencepiece's refusals of a vocabulary the sampled text cannot fill (or has no room for), as a
# fix named by its key; the numbers are the asked and the possible vocabulary size.
_TRAINER_REFUSALS = (
    (re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)"),
     "tokenizer.vocab_size={0}: the corpus can fill at most {1} pieces; set tokenizer.vocab_size<={1} (and "
     "model.vocab_size to match) or add data (tokenizer.sample_bytes caps the text it reads); for a published "
     "tokenizer of that size (the llama presets: Llama 3's), set tokenizer.model_file."),
    (re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)"),
     "tokenizer.vocab_size={0}: the corpus's characters, the byte pieces and the special pieces need {1}; set "
     "tokenizer.vocab_size>={1} (and model.vocab_size to match)."),
    (re.compile(r"\[!sentences_\.empty\(\)\]"),
     "tokenizer: the cleaned corpus has no text to train on; add data, or loosen data.min_chars and the sources' "
     "filters."),
)


class TokenizerError(JaxtrainError, ValueError):
    """A tokenizer jaxtrain cannot use as it is (missing file, no BOS/EOS, unreadable)."""


class Tokenizer(abc.ABC):
    """What the rest of jaxtrain needs of a tokenizer; `load` picks the backend from the file."""

    path: epath.Path  # the tokenizer file (tokenizer.model or tokenizer.json)
    bos_id: int
    eos_id: int
    bos_token: str  # the text of the BOS / EOS tokens (written into exported tokenizer configs)
    eos_token: str

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of the text alone: no BOS or EOS added (callers add them where they belong)."""

    @abc.abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts, in parallel in native code."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    @property
    def exported_adds_bos(self) -> bool:
        """Whether transformers' tokenizer for the exported files puts BOS before the text (lm-eval's HFLM
        scores with that); jaxtrain's own sequences always start with BOS."""
        return True

    def fingerprint(self) -> str:
        return fingerprint(self.path)


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path: str | os.PathLike):
        self.path = epath.Path(path)
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self.path.read_bytes())
        except Exception as e:  # sentencepiece raises a bare RuntimeError on a file that is not a model
            raise TokenizerError(f"{self.path}: not a readable sentencepiece model ({e}).") from e
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise TokenizerError(f"{self.path}: the sentencepiece model has no BOS/EOS piece (bos_id={self.bos_id}, "
                                 f"eos_id={self.eos_id}); jaxtrain needs both. Train it with bos_id and eos_id set.")
        self.bos_token, self.eos_token = self.sp.id_to_piece(self.bos_id), self.sp.id_to_piece(self.eos_id)

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def add_dummy_prefix(self) -> bool:
        """Whether the model puts a word boundary before the text (sentencepiece's add_dummy_prefix): jaxtrain's
        own models do not; Llama 2's does. Read from its behaviour, so no protobuf parsing is needed."""
        pieces = self.sp.encode("a", out_type=str)
        return bool(pieces) and pieces[0].startswith("\u2581")

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), num_threads=os.cpu_count() or 1)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def hf_special_tokens(tokenizer_json: epath.Path) -> dict:
    """bos_token, eos_token and clean_up_tokenization_spaces from the files beside a tokenizer.json
    (tokenizer_config.json, or an older special_tokens_map.json)."""
    found: dict = {}
    for name in HF_TOKENIZER_SIDE_FILES:
        path = tokenizer_json.parent / name
        if path.exists():
            config = json.loads(path.read_text())
            for key in ("bos_token", "eos_token"):
                found.setdefault(key, _token_text(config.get(key)))
            if "clean_up_tokenization_spaces" in config:
                found.setdefault("clean_up_tokenization_spaces", bool(config["clean_up_tokenization_spaces"]))
    return {"bos_token": found.get("bos_token"), "eos_token": found.get("eos_token"),
            "clean_up_tokenization_spaces": found.get("clean_up_tokenization_spaces", False)}


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (PreTrainedTokenizerBase), applied by its decode when the
    tokenizer config says clean_up_tokenization_spaces: true. Written out here because the `tokenizers`
    library does not do it and transformers is not a dependency of jaxtrain."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` (the `tokenizers` library), as transformers' fast tokenizers run it."""

    def __init__(self, path: str | os.PathLike):
        self.path = epath.Path(path)
        try:
            self.tok = tokenizers.Tokenizer.from_str(self.path.read_text())
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(f"{self.path}: not a readable Hugging Face tokenizer.json ({e}).") from e
        special = hf_special_tokens(self.path)
        self.bos_token, self.eos_token = special["bos_token"], special["eos_token"]
        self.clean_up_spaces = special["clean_up_tokenization_spaces"]
        ids = {k: self.tok.token_to_id(v) if v else None for k, v in (("bos", self.bos_token), ("eos", self.eos_token))}
        if ids["bos"] is None or ids["eos"] is None:
            raise TokenizerError(
                f"{self.path}: no BOS/EOS token (bos_token={self.bos_token!r}, eos_token={self.eos_token!r} in "
                f"{HF_TOKENIZER_CONFIG} beside it, each must be a token of the vocabulary); jaxtrain needs both.")
        self.bos_id, self.eos_id = ids["bos"], ids["eos"]

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        text = self.tok.decode(list(ids), skip_special_tokens=False)
        return clean_up_tokenization(text) if self.clean_up_spaces else text

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    @property
    def exported_adds_bos(self) -> bool:
        """A tokenizer.json adds BOS if its post-processor does (Llama 3's TemplateProcessing does)."""
        ids = self.tok.encode("a", add_special_tokens=True).ids
        return bool(ids) and ids[0] == self.bos_id


def load(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer in a file: tokenizer.json -> HFTokenizer, anything else -> sentencepiece."""
    path = epath.Path(path)
    if not path.exists():
        raise TokenizerError(f"{path}: no such tokenizer file.")
    return HFTokenizer(path) if path.name.endswith(".json") else SentencePieceTokenizer(path)


def tokenizer_file(src: str | os.PathLike) -> epath.Path:
    """The tokenizer file a user named: itself, or tokenizer.json / tokenizer.model inside a directory."""
    src = epath.Path(src)
    if src.is_dir():
        for name in (HF_TOKENIZER_FILE, SENTENCEPIECE_FILE):
            if (src / name).exists():
                return src / name
        raise TokenizerError(f"{src}: no {HF_TOKENIZER_FILE} or {SENTENCEPIECE_FILE} in this directory.")
    if not src.exists():
        raise TokenizerError(f"{src}: no such tokenizer file.")
    return src


def install_tokenizer(src: str | os.PathLike, out_dir: str | os.PathLike) -> epath.Path:
    """Copy a tokenizer a user brings into the run (refused here, before any work, if it lacks BOS/EOS).

    A sentencepiece model is copied as tokenizer.model; a tokenizer.json with the config files that name
    its special tokens."""
    src = tokenizer_file(src)
    tokenizer = load(src)
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, HFTokenizer):
        for name in HF_TOKENIZER_SIDE_FILES:
            if (src.parent / name).exists():
                (out_dir / name).write_text((src.parent / name).read_text())
        dst = out_dir / HF_TOKENIZER_FILE
        dst.write_text(src.read_text())
    else:
        dst = out_dir / SENTENCEPIECE_FILE
        dst.write_bytes(src.read_bytes())
    return dst


def fingerprint(path: str | os.PathLike) -> str:
    """Content hash, recorded with checkpoints so a model is never paired with the wrong tokenizer.

    For a tokenizer.json the special tokens named beside it count too (they decide the BOS/EOS ids)."""
    path = epath.Path(path)
    digest = hashlib.sha256(path.read_bytes())
    if path.name.endswith(".json"):
        digest.update(json.dumps(hf_special_tokens(path), sort_keys=True).encode())
    return digest.hexdigest()[:16]


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
) -> epath.Path:
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()  # in memory: no temporary path stored in the model, and out_dir may be gs://
    _train(train_files, model, vocab_size, model_type, byte_fallback, sample_bytes, num_threads, special_tokens)
    (out_dir / SENTENCEPIECE_FILE).write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    (out_dir / "tokenizer.vocab").write_text(  # sentencepiece's .vocab layout: piece TAB score
        "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())), encoding="utf-8")
    return out_dir / SENTENCEPIECE_FILE


def _train(train_files, model_writer, vocab_size, model_type, byte_fallback, sample_bytes, num_threads,
           special_tokens) -> None:
    try:
        _train_spm(train_files, model_writer, vocab_size, model_type, byte_fallback, sample_bytes, num_threads,
                   special_tokens)
    except RuntimeError as e:  # sentencepiece raises a bare RuntimeError with its C++ check
        for pattern, fix in _TRAINER_REFUSALS:
            if found := pattern.search(str(e)):
                raise ConfigError(fix.format(*found.groups())) from e
        raise


def _train_spm(train_files, model_writer, vocab_size, model_type, byte_fallback, sample_bytes, num_threads,
               special_tokens) -> None:
    spm.SentencePieceTrainer.train(
        user_defined_symbols=list(special_tokens),
        sentence_iterator=_lines(train_files, sample_bytes),
        model_writer=model_writer,
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=byte_fallback,
        character_coverage=0.9995,
        **TRAINED_SPECIAL_IDS,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=16384,
        num_threads=num_threads,
        minloglevel=2,
    )


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

    if a == b:
        return True
    try:
        return canonical(a) == canonical(b)
    except DecodeError:  # a damaged file (a truncated model being rebuilt) is never the same model
        return False


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
