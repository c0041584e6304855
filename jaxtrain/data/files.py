"""Local files, read defensively: everything a source's glob matches is accounted for.

Every match gets documents or ledger entries, never silence:
  directory                 one `skipped: directory` entry (never descended into: the glob decides)
  FIFO, device, socket      one `unreadable: special file` entry; never opened (a FIFO would block)
  text / Markdown / other   one document per file; binary content is refused after looking at the
                            whole file (NUL bytes, control bytes, invalid UTF-8 density, random
                            printable noise), not only its start
  JSONL / JSONL.gz          one entry per line: a document, `skipped: blank line`, or unreadable
                            (not JSON, no text field); an empty file is one `skipped: empty file`
  Parquet                   one entry per row, also when the column is missing or a row group is
                            unreadable; an unopenable file is one entry

Damaged compressed streams. A `.jsonl.gz` is decoded once to find its lines and any damage, then
again to emit them. What is kept:
  truncated (the stream ends before its end marker, no invalid data): every complete line; a
    prefix of a valid deflate stream decodes exactly. The cut-off partial line is unreadable.
  corrupt (invalid deflate data mid-stream, or the CRC or length check failing at the end): the
    damage cannot be located from the error (a CRC only says "somewhere"), so lines are trusted
    only up to the first line that shows it (invalid UTF-8 or not JSON); that line and every
    line after it are unreadable. When no decoded line shows the damage, none of the file's lines
    is trusted: with a failed CRC a kept line could be silently altered text.
Either way the damage itself is one more `unreadable` entry naming the file, the line where
decoding stopped and the reason.

Each reader is a generator of Documents whose *return value* is the number of ledger entries the
input requires, counted from the raw data (newlines in the decoded bytes, rows in the Parquet
footer, one per file) rather than from the documents yielded. Curation compares it with the
ledger, so a document lost anywhere between reading and the ledger stops the run.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import stat
import zlib
from typing import Generator, Iterator

import numpy as np
import pyarrow.parquet as pq

# Binary detection over the whole file. Text never contains NUL; a few control bytes occur
# (form feeds, ANSI escapes) but not 1% of a file; Latin-1 or cp1252 prose read as UTF-8 stays
# well under 10% invalid characters (accented letters are a few % even in French), random bytes
# are ~45%. Uniform printable ASCII carries log2(95) = 6.57 bits per byte; prose has about 4.2,
# source code at most 5.3 and base64 6.0, so only near-uniform noise passes 6.3.
MAX_CONTROL_SHARE = 0.01
MAX_INVALID_UTF8_SHARE = 0.10
NOISE_MIN_ASCII_SHARE, NOISE_MIN_BITS, NOISE_MIN_BYTES = 0.95, 6.3, 1024
_CONTROL = np.zeros(256, dtype=bool)
_CONTROL[[*range(0, 8), 11, *range(14, 27), *range(28, 32), 127]] = True  # not \b \t \n \f \r ESC
_READ_CHUNK = 1 << 20


@dataclasses.dataclass
class Document:
    source: str
    doc_id: str  # where it came from: path, path:line, topic name
    text: str | None  # None when unreadable or skipped
    error: str | None = None  # why it is unreadable
    skipped: str | None = None  # not a document at all: a blank line, an empty file, a directory


Reader = Generator[Document, None, int]


def matches(pattern: str) -> list[str]:
    """Everything the glob matches (directories and special files included), sorted."""
    return sorted(glob.glob(os.path.expanduser(pattern), recursive=True))


def readable_matches(pattern: str) -> list[str]:
    """The matches that are not directories: what could hold documents."""
    return [p for p in matches(pattern) if not os.path.isdir(p)]


def file_source(name: str, pattern: str, text_field: str = "text") -> Iterator[Document]:
    """Every match of the glob, in sorted order (the count of entries is dropped)."""
    for path in matches(pattern):
        yield from read_path(path, name, text_field)


def read_path(path: str, name: str, text_field: str = "text") -> Reader:
    """The documents of one match; returns the number of ledger entries it requires."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a dangling link or a loop fails here
    except OSError as e:
        yield Document(name, path, None, f"unreadable: {e.strerror or e}")
        return 1
    if stat.S_ISDIR(mode):
        yield Document(name, path, None, skipped="directory")
        return 1
    if not stat.S_ISREG(mode):
        kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        yield Document(name, path, None, f"special file ({kind}): not opened")
        return 1
    if path.endswith((".jsonl", ".jsonl.gz")):
        return (yield from _jsonl(name, path, text_field))
    if path.endswith(".parquet"):
        return (yield from _parquet(name, path, text_field))
    text, error = read_text(path)
    yield Document(name, path, text, error)
    return 1


def binary_reason(data: bytes) -> str | None:
    """Why `data` is not text, from statistics over all of it; None for text."""
    if not data:
        return None
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    if counts[0]:
        return "binary file (NUL bytes)"
    if counts[_CONTROL].sum() > MAX_CONTROL_SHARE * len(data):
        return "binary file (control bytes)"
    if counts[128:].any():
        text = data.decode("utf-8", errors="replace")
        invalid = text.count("\ufffd") - data.count("\ufffd".encode())
        if invalid > MAX_INVALID_UTF8_SHARE * len(text):
            return "binary file (invalid UTF-8)"
    if len(data) >= NOISE_MIN_BYTES and counts[32:127].sum() >= NOISE_MIN_ASCII_SHARE * len(data):
        p = counts[counts > 0] / len(data)
        if -(p * np.log2(p)).sum() >= NOISE_MIN_BITS:
            return "noise (random printable characters)"
    return None


def read_text(path: str) -> tuple[str | None, str | None]:
    """(text, None), or (None, why not): unreadable, or binary by binary_reason."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    reason = binary_reason(data)
    if reason:
        return None, reason
    return data.decode("utf-8", errors="replace"), None


class _Damage(Exception):
    """A stream that stopped decoding: `kind` is "truncated" or "corrupt"."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _gunzip(f) -> Iterator[bytes]:
    """Decompressed chunks of a (multi-member) gzip stream; raises _Damage where decoding fails.

    Hand-written around zlib because the gzip module cannot say what it had decoded when a read
    fails (its buffered reader drops the partial data) and reports a CRC failure only after the
    data went out; zlib itself does the inflating and the CRC and length checks (wbits=31)."""
    decoder, fed = zlib.decompressobj(wbits=31), False
    while chunk := f.read(_READ_CHUNK):
        while chunk:
            if not fed and not chunk.strip(b"\x00"):  # zero padding after the last member
                break
            fed = True
            try:
                out = decoder.decompress(chunk)
            except zlib.error as e:
                raise _Damage("corrupt", f"corrupt gzip data ({e})") from None
            if out:
                yield out
            chunk = b""
            if decoder.eof:  # next member, if any
                chunk, decoder, fed = decoder.unused_data, zlib.decompressobj(wbits=31), False
    if fed and not decoder.eof:
        raise _Damage("truncated", "truncated gzip stream (ends before its end-of-stream marker)")


def _raw_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        if path.endswith(".gz"):
            yield from _gunzip(f)
        else:
            while chunk := f.read(_READ_CHUNK):
                yield chunk


def _lines(path: str) -> Iterator[bytes]:
    """The lines of a (compressed) file without their newline; the last may be partial. Raises
    _Damage (or OSError) after the last line that decoded."""
    rest = b""
    try:
        for chunk in _raw_chunks(path):
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            yield from parts
    except (_Damage, OSError):
        if rest:
            yield rest
        raise
    if rest:
        yield rest


def _scan(path: str) -> tuple[int, bool, _Damage | None]:
    """First pass: (lines decoded, last line complete?, damage), counted from the bytes."""
    n = 0
    ends_with_newline = True
    try:
        for chunk in _raw_chunks(path):
            n += chunk.count(b"\n")
            ends_with_newline = chunk.endswith(b"\n")
    except _Damage as e:
        damage = e
    except OSError as e:
        damage = _Damage("truncated", f"read failed: {e.strerror or e}")
    else:
        damage = None
    return n + (not ends_with_newline), ends_with_newline, damage


def _shows_damage(line: bytes) -> bool:
    if not line.strip():
        return False
    try:
        json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return True
    return False


def _trusted_lines(path: str, n_lines: int, complete: bool, damage: _Damage | None) -> tuple[int, str]:
    """How many leading lines to trust (see the module docstring), and the reason for the rest."""
    if damage is None:
        return n_lines, ""
    if damage.kind == "truncated":
        return n_lines - (not complete), f"cut off: {damage.reason}"
    lines = _lines(path)
    for i in range(n_lines):
        try:
            line = next(lines)
        except (StopIteration, _Damage, OSError):
            line = b"\xff"  # what decoded is shorter than the first pass found: damage shows here
        if (i == n_lines - 1 and not complete) or _shows_damage(line):
            lines.close()
            return i, f"not trusted, the damage shows at line {i + 1}: {damage.reason}"
    lines.close()
    return 0, f"not trusted, the damage cannot be located: {damage.reason}"


def _jsonl(name: str, path: str, text_field: str) -> Reader:
    n_lines, complete, damage = _scan(path)
    trusted, why = _trusted_lines(path, n_lines, complete, damage)
    lines = _lines(path)
    for lineno in range(1, n_lines + 1):
        try:
            line = next(lines)
        except (StopIteration, _Damage, OSError):  # cannot happen after _scan; accounted anyway
            line = b""
        doc_id = f"{path}:{lineno}"
        yield _json_line(name, doc_id, line, text_field) if lineno <= trusted else Document(name, doc_id, None, why)
    lines.close()
    if damage is not None:
        yield Document(name, f"{path}:damage", None, f"{damage.reason} at line {n_lines + complete}")
        return n_lines + 1
    if n_lines == 0:
        yield Document(name, path, None, skipped="empty file")
        return 1
    return n_lines


def _json_line(name: str, doc_id: str, line: bytes, text_field: str) -> Document:
    if not line.strip():
        return Document(name, doc_id, None, skipped="blank line")
    try:
        record = json.loads(line.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        return Document(name, doc_id, None, f"not JSON: {e.msg}")
    text = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        return Document(name, doc_id, None, f"no string field {text_field!r}")
    return Document(name, doc_id, text)


def _parquet(name: str, path: str, text_field: str) -> Reader:
    try:
        f = pq.ParquetFile(path)
        n_rows, names = f.metadata.num_rows, f.schema_arrow.names
    except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) on corrupt files
        yield Document(name, path, None, f"unreadable parquet: {e}")
        return 1
    if n_rows == 0:
        yield Document(name, path, None, skipped="empty file")
        return 1
    if text_field not in names:
        for row in range(1, n_rows + 1):
            yield Document(name, f"{path}:{row}", None, f"no column {text_field!r} (columns: {names})")
        return n_rows
    row = 0
    for group in range(f.num_row_groups):
        end = row + f.metadata.row_group(group).num_rows
        try:
            for batch in f.iter_batches(batch_size=1024, row_groups=[group], columns=[text_field]):
                for value in batch.column(0).to_pylist():
                    row += 1
                    ok = isinstance(value, str)
                    yield Document(name, f"{path}:{row}", value if ok else None,
                                   None if ok else f"column {text_field!r} is not a string")
        except (OSError, ValueError) as e:
            while row < end:
                row += 1
                yield Document(name, f"{path}:{row}", None, f"unreadable row group {group}: {e}")
    return n_rows
