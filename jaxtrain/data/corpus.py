"""Corpus sources: the embedded default (text every Python install has), TFDS datasets, and
(through `jaxtrain.data.files`) local files.

The embedded default is three named sources, so the mixture machinery always
has something to mix, and it is real, messy text for the cleaning stages:
  stdlib_code       the standard library's own .py files (code, comments, docstrings)
  stdlib_docs       the documentation topics shipped in pydoc_data, plus module docstrings (prose)
  package_metadata  installed distributions' long descriptions and license files (web-like text,
                    with genuine duplicates, e.g. jax/jaxlib share a README)
Order is deterministic (sorted paths and names) so a run is reproducible.

Readers are generators of Documents that return the number of ledger entries their unit
requires, counted independently of what they yield (see `jaxtrain.data.files`).
"""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import sysconfig
from pydoc_data.topics import topics as pydoc_topics
from typing import Iterator

import tensorflow_datasets as tfds

from jaxtrain.data.files import Document, Reader, read_text

EMBEDDED_SOURCES = ("stdlib_code", "stdlib_docs", "package_metadata")
__all__ = ["EMBEDDED_SOURCES", "Document", "embedded_source", "embedded_units", "read_embedded_unit",
           "tfds_ranges", "tfds_source"]


def _stdlib_files() -> list[pathlib.Path]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


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


def _license_files(dist: importlib.metadata.Distribution) -> list:
    return [f for f in sorted(dist.files or [], key=str) if f.name.upper().startswith(("LICENSE", "LICENCE", "COPYING"))]


def read_embedded_unit(unit: str, name: str) -> Reader:
    """The documents of one unit; returns how many ledger entries it requires."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    if name == "stdlib_code":
        text, err = read_text(str(root / unit))
        yield Document(name, unit, text, err)
        return 1
    if name == "stdlib_docs" and unit == "topics":
        for topic in sorted(pydoc_topics):
            yield Document(name, f"topic:{topic}", pydoc_topics[topic])
        return len(pydoc_topics)
    if name == "stdlib_docs":
        text, err = read_text(str(root / unit))
        try:
            doc = ast.get_docstring(ast.parse(text)) if text is not None else None
        except (SyntaxError, ValueError):
            doc = None
        if text is None or doc:
            yield Document(name, f"docstring:{unit}", doc, err)
        else:
            yield Document(name, f"docstring:{unit}", None, skipped="no module docstring")
        return 1
    if name == "package_metadata":
        dist = importlib.metadata.distribution(unit)
        description = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        summary = dist.metadata.get("Summary") or ""
        yield Document(name, f"{unit}:description", f"{summary}\n\n{description}".strip())
        licenses = _license_files(dist)
        for file in licenses:
            text, err = read_text(str(file.locate()))
            yield Document(name, f"{unit}:{file}", text, err)
        return 1 + len(licenses)
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


def tfds_ranges(dataset: str, split: str, data_dir: str | None, chunk: int = 5000) -> list[tuple[int, int]]:
    """Record ranges of a TFDS split, read in parallel by the curation pipeline."""
    n = len(tfds.data_source(dataset, split=split, data_dir=data_dir or None))
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def tfds_source(name: str, dataset: str, split: str, data_dir: str | None, text_field: str,
                start: int = 0, stop: int | None = None) -> Reader:
    """A TFDS dataset by name (`c4/en`, `lm1b`, `wikipedia/20230601.en`), read via tfds.data_source;
    returns the number of records in the range."""
    ds = tfds.data_source(dataset, split=split, data_dir=data_dir or None)
    stop = len(ds) if stop is None else min(stop, len(ds))
    for i in range(start, stop):
        record = ds[i]
        value = record.get(text_field) if isinstance(record, dict) else None
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            yield Document(name, f"{dataset}/{split}:{i}", None, f"no string feature {text_field!r}")
            continue
        yield Document(name, f"{dataset}/{split}:{i}", value)
    return max(stop - start, 0)
