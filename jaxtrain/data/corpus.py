"""Corpus sources: the embedded default (text every Python install has) and local files.

The embedded default is three named sources, so the mixture machinery always
has something to mix, and it is real, messy text for the cleaning stages:
  stdlib_code       the standard library's own .py files (code, comments, docstrings)
  stdlib_docs       the documentation topics shipped in pydoc_data, plus module docstrings (prose)
  package_metadata  installed distributions' long descriptions and license files (web-like text,
                    with genuine duplicates, e.g. jax/jaxlib share a README)
Order is deterministic (sorted paths and names) so a run is reproducible.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import gzip
import importlib.metadata
import json
import os
import pathlib
import sysconfig
from pydoc_data.topics import topics as pydoc_topics
from typing import Iterator

import pyarrow.parquet as pq
import tensorflow_datasets as tfds

EMBEDDED_SOURCES = ("stdlib_code", "stdlib_docs", "package_metadata")


@dataclasses.dataclass
class Document:
    source: str
    doc_id: str  # where it came from: path, path:line, topic name
    text: str | None  # None when unreadable
    error: str | None = None


def _stdlib_files() -> list[pathlib.Path]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _read_text(path: pathlib.Path | str) -> tuple[str | None, str | None]:
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    if b"\x00" in data[:8192]:
        return None, "binary file (NUL bytes)"
    return data.decode("utf-8", errors="replace"), None


def embedded_units(name: str) -> list[str]:
    """Independent pieces of an embedded source (files, topics, distributions), so a Beam
    pipeline can read them on several workers."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    if name == "stdlib_code":
        return [str(p.relative_to(root)) for p in _stdlib_files()]
    if name == "stdlib_docs":
        return ["topics"] + [str(p.relative_to(root)) for p in _stdlib_files()]
    if name == "package_metadata":
        return sorted({(d.metadata.get("Name") or "").lower() for d in importlib.metadata.distributions()} - {""})
    raise ValueError(f"unknown embedded source {name!r}; choose one of {list(EMBEDDED_SOURCES)}")


def read_embedded_unit(unit: str, name: str) -> Iterator[Document]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    if name == "stdlib_code":
        text, err = _read_text(root / unit)
        yield Document(name, unit, text, err)
    elif name == "stdlib_docs" and unit == "topics":
        for topic in sorted(pydoc_topics):
            yield Document(name, f"topic:{topic}", pydoc_topics[topic])
    elif name == "stdlib_docs":
        text, err = _read_text(root / unit)
        if text is None:
            yield Document(name, f"docstring:{unit}", None, err)
            return
        try:
            doc = ast.get_docstring(ast.parse(text))
        except (SyntaxError, ValueError):
            doc = None
        if doc:
            yield Document(name, f"docstring:{unit}", doc)
    elif name == "package_metadata":
        dist = importlib.metadata.distribution(unit)
        description = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        summary = dist.metadata.get("Summary") or ""
        yield Document(name, f"{unit}:description", f"{summary}\n\n{description}".strip())
        for file in sorted(dist.files or [], key=str):
            if file.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
                text, err = _read_text(file.locate())
                yield Document(name, f"{unit}:{file}", text, err)
    else:
        raise ValueError(f"unknown embedded source {name!r}; choose one of {list(EMBEDDED_SOURCES)}")


def embedded_source(name: str) -> Iterator[Document]:
    for unit in embedded_units(name):
        yield from read_embedded_unit(unit, name)


def stdlib_code() -> Iterator[Document]:
    return embedded_source("stdlib_code")


def stdlib_docs() -> Iterator[Document]:
    return embedded_source("stdlib_docs")


def package_metadata() -> Iterator[Document]:
    return embedded_source("package_metadata")


def source_files(pattern: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if not os.path.isdir(p))


def file_source(name: str, pattern: str, text_field: str = "text") -> Iterator[Document]:
    """Every file matching the glob, in sorted order."""
    for path in source_files(pattern):
        yield from read_file(path, name, text_field)


def read_file(path: str, name: str, text_field: str = "text") -> Iterator[Document]:
    """Plain text / Markdown: one document per file; JSONL(.gz) and Parquet: one per record."""
    if path.endswith((".jsonl", ".jsonl.gz")):
        yield from _jsonl_docs(name, path, text_field)
    elif path.endswith(".parquet"):
        yield from _parquet_docs(name, path, text_field)
    else:
        text, err = _read_text(path)
        yield Document(name, path, text, err)


def _parquet_docs(name: str, path: str, text_field: str) -> Iterator[Document]:
    try:
        f = pq.ParquetFile(path)
        if text_field not in f.schema_arrow.names:
            yield Document(name, path, None, f"no column {text_field!r} (columns: {f.schema_arrow.names})")
            return
        row = 0
        for batch in f.iter_batches(columns=[text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                ok = isinstance(value, str)
                error = None if ok else f"column {text_field!r} is not a string"
                yield Document(name, f"{path}:{row}", value if ok else None, error)
    except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) on corrupt files
        yield Document(name, path, None, f"unreadable parquet: {e}")


def tfds_ranges(dataset: str, split: str, data_dir: str | None, chunk: int = 5000) -> list[tuple[int, int]]:
    """Record ranges of a TFDS split, read in parallel by the curation pipeline."""
    n = len(tfds.data_source(dataset, split=split, data_dir=data_dir or None))
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def tfds_source(name: str, dataset: str, split: str, data_dir: str | None, text_field: str,
                start: int = 0, stop: int | None = None) -> Iterator[Document]:
    """A TFDS dataset by name (`c4/en`, `lm1b`, `wikipedia/20230601.en`), read via tfds.data_source."""
    ds = tfds.data_source(dataset, split=split, data_dir=data_dir or None)
    for i in range(start, len(ds) if stop is None else min(stop, len(ds))):
        record = ds[i]
        value = record.get(text_field) if isinstance(record, dict) else None
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            yield Document(name, f"{dataset}/{split}:{i}", None, f"no string feature {text_field!r}")
            continue
        yield Document(name, f"{dataset}/{split}:{i}", value)


def _jsonl_docs(name: str, path: str, text_field: str) -> Iterator[Document]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                doc_id = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    yield Document(name, doc_id, None, f"not JSON: {e.msg}")
                    continue
                text = record.get(text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    yield Document(name, doc_id, None, f"no string field {text_field!r}")
                    continue
                yield Document(name, doc_id, text)
    except OSError as e:
        yield Document(name, path, None, f"unreadable: {e}")
