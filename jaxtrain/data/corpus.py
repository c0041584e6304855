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
from typing import Iterator

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


def stdlib_code() -> Iterator[Document]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_files():
        text, err = _read_text(path)
        yield Document("stdlib_code", str(path.relative_to(root)), text, err)


def stdlib_docs() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document("stdlib_docs", f"topic:{name}", topics[name])
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_files():
        text, err = _read_text(path)
        if text is None:
            yield Document("stdlib_docs", f"docstring:{path.relative_to(root)}", None, err)
            continue
        try:
            doc = ast.get_docstring(ast.parse(text))
        except (SyntaxError, ValueError):
            doc = None
        if doc:
            yield Document("stdlib_docs", f"docstring:{path.relative_to(root)}", doc)


def package_metadata() -> Iterator[Document]:
    dists = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name and name not in dists:
            dists[name] = dist
    for name in sorted(dists):
        dist = dists[name]
        description = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        summary = dist.metadata.get("Summary") or ""
        yield Document("package_metadata", f"{name}:description", f"{summary}\n\n{description}".strip())
        for file in sorted(dist.files or [], key=str):
            if file.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
                text, err = _read_text(file.locate())
                yield Document("package_metadata", f"{name}:{file}", text, err)


def embedded_source(name: str) -> Iterator[Document]:
    readers = {"stdlib_code": stdlib_code, "stdlib_docs": stdlib_docs, "package_metadata": package_metadata}
    if name not in readers:
        raise ValueError(f"unknown embedded source {name!r}; choose one of {sorted(readers)}")
    return readers[name]()


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
    import pyarrow.parquet as pq

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


def tfds_source(name: str, dataset: str, split: str, data_dir: str | None, text_field: str) -> Iterator[Document]:
    """A TFDS dataset by name (`c4/en`, `lm1b`, `wikipedia/20230601.en`), read via tfds.data_source."""
    import tensorflow_datasets as tfds

    ds = tfds.data_source(dataset, split=split, data_dir=data_dir or None)
    for i in range(len(ds)):
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
