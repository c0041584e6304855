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

Damaged compressed streams. A `.jsonl.gz` is decoded once to count its lines and find any
damage, then again to emit them. A line is trusted when a gzip check vouches for it, or when
the only damage is an early end:
  lines of gzip members whose CRC and length checks passed: trusted (a multi-member file keeps
    its good members);
  truncated (the stream ends before its end marker, no invalid data): every complete line is
    kept, since a prefix of a valid deflate stream decodes exactly; the cut-off line is not;
  corrupt (invalid deflate data, or a member's CRC or length check failing at its end): no line
    of the damaged member is trusted, those before the error included. The error does not locate
    the damage: over 600 single-bit flips in a gzip of pydoc topics as JSONL, 96% decoded to the
    end and only the CRC failed, and in about half of those a line-level test (valid UTF-8 and
    JSON) would have kept silently altered text, anywhere in the file; with several flips, lines
    before an invalid-data error were altered too (13 of 87 cases).
Every decoded line gets its own ledger entry either way, and the damage one more, naming the
file, the line where decoding stopped and the reason.

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
from etils import epath
from resiliparse.parse.encoding import detect_encoding

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
_REPLAY_STEP = 64  # compressed bytes per step when replaying a damaged chunk


@dataclasses.dataclass
class Document:
    source: str
    doc_id: str  # where it came from: path, path:line, topic name
    text: str | None  # None when unreadable or skipped
    error: str | None = None  # why it is unreadable
    skipped: str | None = None  # not a document at all: a blank line, an empty file, a directory
    meta: dict | None = None  # provenance (web: url, domain, record_id, date): ledger and cleaned JSONL, not tokens


Reader = Generator[Document, None, int]


def is_remote(path: str) -> bool:
    return "://" in path  # gs://, s3://, ...: read through etils.epath


def matches(pattern: str) -> list[str]:
    """Everything the glob matches (directories and special files included), sorted; a gs:// pattern is
    globbed through etils.epath from its last directory without wildcards."""
    if not is_remote(pattern):
        return sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    parts = pattern.split("/")
    first = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    if first == len(parts):
        return [pattern] if epath.Path(pattern).exists() else []
    return sorted(str(p) for p in epath.Path("/".join(parts[:first])).glob("/".join(parts[first:])))


def readable_matches(pattern: str) -> list[str]:
    """The matches that are not directories: what could hold documents."""
    if is_remote(pattern):
        return [p for p in matches(pattern) if not epath.Path(p).is_dir()]
    return [p for p in matches(pattern) if not os.path.isdir(p)]


def file_source(name: str, pattern: str, text_field: str = "text") -> Iterator[Document]:
    """Every match of the glob, in sorted order (the count of entries is dropped)."""
    for path in matches(pattern):
        yield from read_path(path, name, text_field)


def not_a_file(name: str, path: str) -> Document | None:
    """The one ledger entry of a match that is not a regular file (unreadable, a directory, a FIFO, a
    socket, a device: never opened, so a FIFO cannot block), or None for a file."""
    if is_remote(path):
        return Document(name, path, None, skipped="directory") if epath.Path(path).is_dir() else None
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a dangling link or a loop fails here
    except OSError as e:
        return Document(name, path, None, f"unreadable: {e.strerror or e}")
    if stat.S_ISDIR(mode):
        return Document(name, path, None, skipped="directory")
    if not stat.S_ISREG(mode):
        kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        return Document(name, path, None, f"special file ({kind}): not opened")
    return None


def read_path(path: str, name: str, text_field: str = "text") -> Reader:
    """The documents of one match; returns the number of ledger entries it requires."""
    if (entry := not_a_file(name, path)) is not None:
        yield entry
        return 1
    if path.endswith((".jsonl", ".jsonl.gz")):
        return (yield from _jsonl(name, path, text_field))
    if path.endswith(".parquet"):
        return (yield from _parquet(name, path, text_field))
    text, error, encoding = read_decoded(path)
    yield Document(name, path, text, error, meta={"encoding": encoding} if encoding not in ("", "utf-8") else None)
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


def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 when the bytes are; otherwise the encoding resiliparse detects (cp1252,
    Latin-1, Shift-JIS, ...), so accented letters survive; only bytes no detected encoding decodes are
    replaced (and the ledger's repaired_utf8 counts the document)."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    encoding = detect_encoding(data)
    try:
        return data.decode(encoding), encoding
    except (LookupError, UnicodeDecodeError):
        return data.decode("utf-8", errors="replace"), "utf-8"


def read_decoded(path: str) -> tuple[str | None, str | None, str]:
    """(text, None, encoding), or (None, why not, ""): unreadable, or binary by binary_reason."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}", ""
    reason = binary_reason(data)
    if reason:
        return None, reason, ""
    text, encoding = decode(data)
    return text, None, encoding


def read_text(path: str) -> tuple[str | None, str | None]:
    """(text, None), or (None, why not): unreadable, or binary by binary_reason."""
    text, error, _ = read_decoded(path)
    return text, error


class _Damage(Exception):
    """A stream that stopped decoding. kind: "truncated" (ends early), "check" (a gzip member's CRC or
    length check failed), "data" (invalid compressed data). verified: decoded bytes of the gzip
    members whose checks passed before the damage."""

    def __init__(self, kind: str, reason: str, verified: int = 0):
        super().__init__(reason)
        self.kind, self.reason, self.verified = kind, reason, verified


class _Inflater:
    """zlib inflating a (multi-member) gzip stream; zlib checks each member's CRC and length."""

    def __init__(self):
        self.decoder, self.fed = zlib.decompressobj(wbits=31), False
        self.out = self.verified = 0  # bytes decoded; bytes decoded by members whose checks passed

    def copy(self) -> "_Inflater":
        other = _Inflater()
        other.decoder, other.fed, other.out, other.verified = self.decoder.copy(), self.fed, self.out, self.verified
        return other

    def feed(self, chunk: bytes) -> list[bytes]:
        out = []
        while chunk:
            if not self.fed and not chunk.strip(b"\x00"):  # zero padding after the last member
                break
            self.fed = True
            out.append(self.decoder.decompress(chunk))  # zlib.error on invalid data or a failed check
            self.out += len(out[-1])
            chunk = b""
            if self.decoder.eof:  # member verified; next member, if any
                chunk, self.decoder, self.fed = self.decoder.unused_data, zlib.decompressobj(wbits=31), False
                self.verified = self.out
        return out


def _gunzip(f) -> Iterator[bytes]:
    """Decompressed chunks of a gzip stream; raises _Damage after the last data that decoded.

    Hand-written around zlib because the gzip module cannot say what it had decoded when a read
    fails (its buffered reader drops the partial data) nor which members verified. zlib drops the
    output of a call that fails, so a failing chunk is replayed from a copy of the decoder in
    small steps: a member that verified earlier in that chunk is kept, and the lines decoded
    before the damage are all counted (all but at most the output of one small step)."""
    inflater = _Inflater()
    while chunk := f.read(_READ_CHUNK):
        saved = inflater.copy()
        try:
            out = inflater.feed(chunk)
        except zlib.error:
            inflater = saved
            for i in range(0, len(chunk), _REPLAY_STEP):
                try:
                    out = inflater.feed(chunk[i:i + _REPLAY_STEP])
                except zlib.error as e:
                    if "data check" in str(e) or "length check" in str(e):
                        raise _Damage("check", f"gzip CRC or length check failed ({e})", inflater.verified) from None
                    raise _Damage("data", f"corrupt gzip data ({e})", inflater.verified) from None
                yield from filter(None, out)
            raise _Damage("data", "corrupt gzip data", inflater.verified)  # failed only on the whole chunk
        yield from filter(None, out)
    if inflater.fed and not inflater.decoder.eof:
        raise _Damage("truncated", "truncated gzip stream (ends before its end-of-stream marker)", inflater.verified)


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
    pending: list[bytes] = []  # the current line's pieces (a line may span many chunks)
    try:
        for chunk in _raw_chunks(path):
            if b"\n" not in chunk:
                pending.append(chunk)
                continue
            parts = chunk.split(b"\n")
            parts[0] = b"".join([*pending, parts[0]])
            pending = [parts.pop()]
            yield from parts
    except (_Damage, OSError):
        if rest := b"".join(pending):
            yield rest
        raise
    if rest := b"".join(pending):
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


def _jsonl(name: str, path: str, text_field: str) -> Reader:
    n_lines, complete, damage = _scan(path)
    if damage is None:
        trusted_bytes = None
    elif damage.kind == "truncated":
        trusted_bytes, why = None, f"cut off: {damage.reason}"
    else:
        trusted_bytes, why = damage.verified, f"not trusted, in the damaged gzip member: {damage.reason}"
    lines = _lines(path)
    offset = 0
    for lineno in range(1, n_lines + 1):
        try:
            line = next(lines)
        except (StopIteration, _Damage, OSError):  # cannot happen after _scan; accounted anyway
            line = b""
        offset += len(line) + 1
        doc_id = f"{path}:{lineno}"
        if damage is None or (trusted_bytes is None and (lineno < n_lines or complete)) or (
                trusted_bytes is not None and offset <= trusted_bytes):
            yield _json_line(name, doc_id, line, text_field)
        else:
            yield Document(name, doc_id, None, why)
    lines.close()
    damaged = None if damage is None else f"{damage.reason} at line {n_lines + complete}"
    return (yield from end_of_unit(name, path, n_lines, damage=damaged))


def end_of_unit(name: str, path: str, entries: int, *, damage: str | None = None, empty: str = "empty file"
                ) -> Reader:
    """The closing ledger entry of a unit (a file) whose `entries` documents were yielded: one for its damage
    (`path:damage`, the reason), or one saying it held nothing; returns the unit's number of entries."""
    if damage is not None:
        yield Document(name, f"{path}:damage", None, damage)
        return entries + 1
    if entries == 0:
        yield Document(name, path, None, skipped=empty)
        return 1
    return entries


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
