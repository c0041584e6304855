"""The data and tokenizer sections of the run config; each checks its own fields when built."""

from __future__ import annotations

import dataclasses
from typing import Literal

from etils import epath

from jaxtrain.data import web
from jaxtrain.data.corpus import EMBEDDED_SOURCES
from jaxtrain.data.filters import ALL_RULES
from jaxtrain.data.thresholds import Thresholds
from jaxtrain.errors import check


SOURCE_FIELDS_NOT_CURATED = ("weight", "train", "license", "origin")  # changing them never redoes curation


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    name: str = "stdlib_code"
    type: Literal["embedded", "files", "tfds", "warc"] = "embedded"
    path: str = ""  # glob for type=files (.txt, .md, .jsonl, .jsonl.gz, .parquet; anything else is text) or warc
    text_field: str = "text"  # JSONL field / Parquet column / TFDS feature holding the document
    dataset: str = ""  # type=tfds: name[/config][:version], e.g. c4/en, lm1b
    split: str = "train"  # type=tfds: split to read
    data_dir: str = ""  # type=tfds: TFDS data_dir (default: TFDS's)
    content: Literal["prose", "code", "docs"] = "prose"  # picks the default quality rules
    filters: tuple[str, ...] | None = None  # quality rules to run (None: the content's defaults; []: none)
    pii: bool = True  # replace e-mail and IP addresses
    weight: float = 0.0  # token share (0.3 = 30% of training tokens); 0 = a share of what the weighted sources leave,
    # in proportion to the source's tokens (or temperature); when every source has a weight, they are relative
    train: bool = True  # false: curated, tokenized and evaluated, never trained on (a held-out reference set,
    # as Levanter's validation-only sets; also the positives of a quality classifier that must not be trained on)
    max_bytes: int = 0  # cap on kept text per source (0 = no cap)
    languages: tuple[str, ...] = ()  # ISO 639-1 codes to keep (py3langid); empty = keep all
    min_language_score: float = 0.0  # and only when the identifier's probability is at least this
    url_blocklist: str = ""  # file of domains / URL substrings to drop, one per line, '#' comments
    license: str = ""  # what the data may be used under: an SPDX id (apache-2.0, cc-by-4.0) or free text; for the cards
    origin: str = ""  # where it came from (a URL, a dataset name, "our wiki export 2026-11"); for the cards

    def check(self, key: str) -> None:
        """Called by DataConfig with this source's key, e.g. data.sources[2]."""
        check(self.name.isidentifier(), f"{key}.name: {self.name!r} must be a valid identifier.")
        check(self.weight >= 0, f"{key}.weight: must be >= 0, got {self.weight}.")
        if self.filters is not None:
            bad = [f for f in self.filters if f not in ALL_RULES]
            check(not bad, f"{key}.filters: unknown rule(s) {bad}; choose from {list(ALL_RULES)} or [] for none.")
        if self.languages:
            bad = [c for c in self.languages if c not in web.language_codes()]
            check(not bad, f"{key}.languages: unknown code(s) {bad}; use ISO 639-1 codes py3langid knows, "
                  f"e.g. en, de, fr.")
        check(0 <= self.min_language_score <= 1,
              f"{key}.min_language_score: must be in [0, 1], got {self.min_language_score}.")
        if self.url_blocklist:
            path = epath.Path(self.url_blocklist)
            check(path.exists(),
                  f"{key}.url_blocklist: file {self.url_blocklist!r} does not exist; give a file of domains, one per line.")
            check(path.is_file(), f"{key}.url_blocklist: {self.url_blocklist!r} is not a file; give a file of domains "
                  "or URL substrings, one per line.")
            try:
                path.read_text()
            except UnicodeDecodeError:
                check(False, f"{key}.url_blocklist: {self.url_blocklist!r} is not UTF-8 text; give a file of domains "
                      "or URL substrings, one per line.")
        if self.type in ("files", "warc"):
            check(bool(self.path), f"{key}.path: a glob is required for type={self.type}.")
        elif self.type == "tfds":
            check(bool(self.dataset), f"{key}.dataset: a TFDS name (e.g. c4/en, lm1b) is required for type=tfds.")
        else:
            check(self.name in EMBEDDED_SOURCES, f"{key}.name: {self.name!r} is not an embedded source; use one of "
                  f"{list(EMBEDDED_SOURCES)} or set type=files with a path.")


@dataclasses.dataclass(frozen=True)
class MixtureStage:
    step: int = 0  # from this training step on ...
    weights: tuple[float, ...] = ()  # ... these token shares, one per source in data.sources order


@dataclasses.dataclass(frozen=True)
class QualityClassifierConfig:
    """A learned quality filter (data/quality.py): fastText trained on this run's kept documents."""
    reference: tuple[str, ...] = ()  # sources whose kept documents are the positives (text you trust); empty = off
    apply_to: tuple[str, ...] = ()  # sources it filters, whose kept documents are the negatives;
    # empty = every web (type=warc) source, or every source not in `reference` when there is none
    threshold: float = 0.0  # keep a document when P(reference-like) >= threshold (e.g. 0.5) ...
    keep_fraction: float = 0.0  # ... or the top fraction of each filtered source by score (DCLM kept 10%): set one
    max_examples: int = 20_000  # documents sampled per class (DCLM trained on 400k in all; enough for a binary task)

    def check(self, sources: list[str], types: dict[str, str]) -> None:
        key = "data.quality_classifier"
        if not self.reference:
            check(not self.apply_to, f"{key}.apply_to: set {key}.reference too (the sources whose documents are "
                  "the positives), or remove apply_to.")
            return
        for field in ("reference", "apply_to"):
            bad = [n for n in getattr(self, field) if n not in sources]
            check(not bad, f"{key}.{field}: unknown source(s) {bad}; choose from {sources}.")
        both = set(self.reference) & set(self.apply_to)
        check(not both, f"{key}: source(s) {sorted(both)} are in both reference and apply_to; a source is either "
              "the positives or filtered.")
        check(bool(self.targets(sources, types)), f"{key}.apply_to: nothing to filter: every source is a reference; "
              "name the sources to filter.")
        check(0.0 <= self.threshold <= 1.0, f"{key}.threshold: must be in [0, 1], got {self.threshold}.")
        check((self.threshold > 0) != (self.keep_fraction > 0),
              f"{key}: set one of threshold (keep P(reference-like) >= it, e.g. 0.5) or keep_fraction (keep the "
              f"best-scored share, e.g. 0.5), not {'both' if self.threshold > 0 else 'neither'}.")
        check(0.0 <= self.keep_fraction < 1.0,
              f"{key}.keep_fraction: must be in [0, 1) (0 = use threshold), got {self.keep_fraction}.")
        check(self.max_examples >= 10, f"{key}.max_examples: must be >= 10, got {self.max_examples}.")

    def targets(self, sources: list[str], types: dict[str, str]) -> tuple[str, ...]:
        """The sources the classifier filters."""
        if self.apply_to:
            return self.apply_to
        web = tuple(n for n in sources if types[n] == "warc" and n not in self.reference)
        return web or tuple(n for n in sources if n not in self.reference)


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
    minhash_ngram: int = 5  # word n-gram shingles (FineWeb)
    minhash_bands: int = 14  # 14 x 8 = 112 hashes: candidate probability 0.57 at Jaccard 0.7, 0.92 at 0.8
    minhash_rows: int = 8
    decontaminate: tuple[str, ...] = ()  # globs of evaluation sets (text/JSONL): drop docs sharing an n-gram
    decontaminate_ngram: int = 13  # GPT-3's decontamination n-gram
    thresholds: Thresholds = Thresholds()  # every quality rule's thresholds, published defaults (data/thresholds.py)
    warn_lost_fraction: float = 0.9  # warn when curation removes more of a source's bytes (web crawls lose most)
    quality_classifier: QualityClassifierConfig = QualityClassifierConfig()  # learned filter (off by default)
    curate_workers: int = 1  # Beam DirectRunner worker processes (1 = in-process)
    clean_shards: int = 1  # files per source and split written by curation (raise for big corpora)
    beam_options: tuple[str, ...] = ()  # extra Beam pipeline flags, e.g. ["--runner=DataflowRunner", ...]
    mixture_temperature: float = 0.0  # > 0: weights ~ n_tokens^(1/T) for sources without a weight
    mixture_schedule: tuple[MixtureStage, ...] = ()  # later stages of the mixture, e.g. an annealing mix
    pack: bool = True  # concatenate documents into full rows; false: one document per row, padded
    eval_fraction: float = 0.02
    seq_len: int = 256
    shuffle_seed: int = 0
    read_threads: int = 0  # rows built ahead in threads: 0 = synchronous on local disk (fastest there, measured),
    # 16 automatically when the run directory is on gs://; set it to override either
    num_threads: int = 0  # whole batches prefetched by a background thread (0 = none)

    def __post_init__(self) -> None:
        check(0.0 < self.eval_fraction < 0.5, f"data.eval_fraction: {self.eval_fraction} must be in (0, 0.5).")
        check(len(self.sources) > 0, "data.sources: at least one source is required.")
        names = [s.name for s in self.sources]
        check(len(set(names)) == len(names), f"data.sources: names must be unique, got {names}.")
        check(any(s.train for s in self.sources), "data.sources: every source has train: false; at least one must be "
              "trained on.")
        for i, source in enumerate(self.sources):
            source.check(f"data.sources[{i}]")
        check(self.minhash_bands * self.minhash_rows <= 1024 and self.minhash_bands > 0 and self.minhash_rows > 0,
              f"data.minhash_bands x data.minhash_rows: {self.minhash_bands} x {self.minhash_rows} must be positive, "
              "<= 1024 hashes.")
        weighted = {s.name: s.weight for s in self.sources if s.train and s.weight > 0}
        unweighted = [s.name for s in self.sources if s.train and s.weight <= 0]
        check(not (weighted and unweighted and sum(weighted.values()) >= 1),
              f"data.sources[*].weight: {weighted} are token shares summing to {sum(weighted.values()):g}, which "
              f"leaves nothing for {unweighted} (no weight: they share what is left); keep the weights below 1 in "
              "total, or give every source a weight (then they are relative).")
        check(self.mixture_temperature >= 0,
              f"data.mixture_temperature: must be >= 0 (0 = off), got {self.mixture_temperature}.")
        for k, stage in enumerate(self.mixture_schedule):
            previous = self.mixture_schedule[k - 1].step if k else 0
            check(stage.step > previous,
                  f"data.mixture_schedule[{k}].step: {stage.step} must be > {previous} (steps increase).")
            check(len(stage.weights) == len(self.sources) and all(w >= 0 for w in stage.weights)
                  and sum(stage.weights) > 0,
                  f"data.mixture_schedule[{k}].weights: {list(stage.weights)} needs one weight >= 0 per source "
                  f"({names}), not all zero.")
            held = [n for n, w, src in zip(names, stage.weights, self.sources) if w > 0 and not src.train]
            check(not held, f"data.mixture_schedule[{k}].weights: source(s) {held} have train: false; give them weight 0.")
        self.quality_classifier.check(names, {s.name: s.type for s in self.sources})
        self.thresholds.check()
        check(0 < self.warn_lost_fraction <= 1,
              f"data.warn_lost_fraction: must be in (0, 1], got {self.warn_lost_fraction}.")
        check(self.curate_workers > 0, f"data.curate_workers: must be positive, got {self.curate_workers}.")
        check(0 < self.clean_shards <= 99999, f"data.clean_shards: must be in 1..99999, got {self.clean_shards}.")
        check(self.seq_len > 0, f"data.seq_len: must be positive, got {self.seq_len}.")

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    def curation_inputs(self) -> dict:
        """What the cleaned corpus depends on: every field curation reads (a change redoes curation and
        the stages after it). Not: the mixture weight or `train`, the Beam execution settings (curate_workers,
        beam_options: the same output on any runner, tested) or the loader settings, nor the cards' license and origin."""
        keys = ("min_chars", "max_chars", "min_alpha_fraction", "exact_dedup", "near_dedup", "minhash_ngram",
                "minhash_bands", "minhash_rows", "decontaminate", "decontaminate_ngram", "clean_shards",
                "eval_fraction")
        changed = {"thresholds": dataclasses.asdict(self.thresholds)} if self.thresholds != Thresholds() else {}
        sources = [{k: v for k, v in dataclasses.asdict(s).items() if k not in SOURCE_FIELDS_NOT_CURATED}
                   for s in self.sources]
        qc = {"quality_classifier": dataclasses.asdict(self.quality_classifier)} if self.quality_classifier.reference else {}
        # off / published: the same inputs as before these existed (a finished corpus is not redone)
        return {"sources": sources, **{k: getattr(self, k) for k in keys}, **qc, **changed}


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 2048
    model_type: Literal["bpe", "unigram"] = "bpe"
    byte_fallback: bool = True  # unknown characters become bytes, never <unk>
    sample_bytes: int = 4_000_000  # bound on the text the tokenizer is trained on
    model_file: str = ""  # use an existing tokenizer instead of training: a sentencepiece .model, a Hugging Face
    # tokenizer.json (tokenizer_config.json beside it names BOS/EOS), or a directory holding either
    special_tokens: tuple[str, ...] = ()  # user-defined pieces kept whole, e.g. ["<|endoftext|>", "<|code|>"]

    def __post_init__(self) -> None:
        check(self.vocab_size > 0, f"tokenizer.vocab_size: must be positive, got {self.vocab_size}.")

    def inputs(self) -> dict:
        """What the tokenizer stage depends on: all of this section."""
        return dataclasses.asdict(self)
