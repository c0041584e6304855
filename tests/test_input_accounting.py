"""Every input line accounted for (#16, #13): damaged streams, special files, binary detection over
the whole file, per-row Parquet failures, and a ledger checked against counts taken when reading.

The bad-corpus test builds each file itself and computes, with its own zlib calls and
arithmetic (not jaxtrain's readers), how many ledger lines each file must produce.
"""

import faulthandler
import gzip
import json
import os
import re
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxtrain.config import load_config
from jaxtrain.data import curate, files, prepare, stages
from jaxtrain.rundir import RunDir

_WORDS = ("river bridge council budget library evening morning engineer residents road detour minutes website "
          "garden market school teacher student harbour ship captain weather storm village mountain forest trail "
          "bakery bread farmer field harvest museum painting artist concert music orchestra station train ticket "
          "hospital doctor nurse patient clinic office manager report meeting project plan design window door").split()


def _prose(i: int) -> str:
    """A distinct prose document per i that passes the web-prose rules."""
    rng = np.random.default_rng(1000 + i)
    return " ".join(f"The {w[0]} and the {w[1]} went to the {w[2]} with {' '.join(w[3:])}."
                    for w in (list(rng.choice(_WORDS, 9)) for _ in range(12)))


def _jsonl(texts) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def _inflate_raw(member: bytes) -> bytes:
    """The test's own decoder: raw deflate after the 10-byte gzip header, no CRC check, stops where
    the data stops (a truncated stream gives its decodable prefix)."""
    return zlib.decompressobj(-15).decompress(member[10:])


def _lines_in(data: bytes) -> tuple[int, int]:
    """(complete lines, 1 if a partial last line else 0)."""
    return data.count(b"\n"), int(bool(data) and not data.endswith(b"\n"))


def _silent_flip(member: bytes, original: bytes) -> bytes:
    """The member with one bit flipped such that deflate still decodes to the end (only the CRC
    can notice), the text changes and the line count does not: a silently altered line."""
    for pos in range(len(member) // 2, len(member) - 8):
        for bit in range(8):
            b = bytearray(member)
            b[pos] ^= 1 << bit
            try:
                d = zlib.decompressobj(-15)
                out = d.decompress(bytes(b[10:]))
            except zlib.error:
                continue
            if d.eof and out != original and out.count(b"\n") == original.count(b"\n"):
                return bytes(b)
    raise AssertionError("no silent flip found")


def _ledger(run: RunDir) -> list[dict]:
    return [json.loads(x) for p in sorted(run.clean.glob("ledger-*.jsonl")) for x in p.read_text().splitlines()]


def _file_of(entry_id: str) -> str:
    return re.sub(r":(\d+|damage)$", "", entry_id)


def _curate(tmp_path, src_dir, *extra):
    cfg = load_config("tiny", [f"data.sources=[{{name: bad, type: files, content: prose, path: '{src_dir}/*'}}]",
                               "data.min_chars=100", "data.eval_fraction=0.3", "data.near_dedup=false", *extra])
    run = RunDir(tmp_path / "run")
    return prepare.prepare_corpus(cfg.data, run), run


def test_bad_corpus_is_accounted_for_line_by_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    expected: dict[str, int] = {}  # ledger lines each file must produce, computed here
    doc = iter(range(10_000))

    # good .jsonl.gz: 40 lines
    good = [_prose(next(doc)) for _ in range(40)]
    (src / "good.jsonl.gz").write_bytes(gzip.compress(_jsonl(good), mtime=0))
    expected["good.jsonl.gz"] = 40
    # truncated .jsonl.gz: complete lines of the decodable prefix, the cut line, the damage
    trunc_texts = [_prose(next(doc)) for _ in range(40)]
    full = gzip.compress(_jsonl(trunc_texts), mtime=0)
    cut = full[: len(full) * 6 // 10]
    (src / "truncated.jsonl.gz").write_bytes(cut)
    complete, partial = _lines_in(_inflate_raw(cut))
    assert 5 < complete < 40 and partial == 1
    expected["truncated.jsonl.gz"] = complete + partial + 1
    # bit-flipped .jsonl.gz: decodes to the end with one line silently altered, only the CRC fails
    flip_texts = [_prose(next(doc)) for _ in range(40)]
    raw = _jsonl(flip_texts)
    flipped = _silent_flip(gzip.compress(raw, mtime=0), raw)
    (src / "flipped.jsonl.gz").write_bytes(flipped)
    expected["flipped.jsonl.gz"] = 40 + 1
    # two gzip members, the second flipped: the first member's 20 lines still verify
    multi_texts = [_prose(next(doc)) for _ in range(40)]
    first, second = _jsonl(multi_texts[:20]), _jsonl(multi_texts[20:])
    (src / "multi.jsonl.gz").write_bytes(gzip.compress(first, mtime=0)
                                         + _silent_flip(gzip.compress(second, mtime=0), second))
    expected["multi.jsonl.gz"] = 40 + 1
    # blank lines (one only spaces), a last line without newline
    blank_texts = [_prose(next(doc)) for _ in range(3)]
    (src / "blank.jsonl").write_text("\n".join([json.dumps({"text": blank_texts[0]}), "", json.dumps(
        {"text": blank_texts[1]}), "   ", json.dumps({"text": blank_texts[2]})]))
    expected["blank.jsonl"] = 5
    # empty files
    (src / "empty.jsonl").write_bytes(b"")
    (src / "empty.jsonl.gz").write_bytes(gzip.compress(b"", mtime=0))
    expected["empty.jsonl"] = expected["empty.jsonl.gz"] = 1
    # a FIFO (never opened: opening it would block), a directory matched by the glob
    os.mkfifo(src / "pipe.txt")
    (src / "folder.txt").mkdir()
    expected["pipe.txt"] = expected["folder.txt"] = 1
    # binary content the first 8 KB do not show, random bytes, printable noise; Latin-1 prose is text
    rng = np.random.default_rng(0)
    late = _prose(next(doc)).encode() * 20
    (src / "nul_after_8k.txt").write_bytes(late[:10_000] + b"\x00" + late[10_000:])
    (src / "random.txt").write_bytes(rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    (src / "random_no_nul.txt").write_bytes(rng.integers(1, 256, 20_000, dtype=np.uint8).tobytes())
    (src / "high_bytes.txt").write_bytes(rng.integers(128, 256, 20_000, dtype=np.uint8).tobytes())
    (src / "noise.txt").write_bytes(rng.integers(32, 127, 20_000, dtype=np.uint8).tobytes())
    (src / "latin1.txt").write_bytes(("Caf\xe9 cr\xe8me. " + _prose(next(doc))).encode("latin-1"))
    for name in ("nul_after_8k.txt", "random.txt", "random_no_nul.txt", "high_bytes.txt", "noise.txt", "latin1.txt"):
        expected[name] = 1
    # Parquet: a file without the column (one line per row), a null row, an unreadable file
    pq.write_table(pa.table({"other": [f"x{i}" for i in range(5)]}), src / "no_column.parquet")
    pq.write_table(pa.table({"text": [_prose(next(doc)), None, _prose(next(doc))]}), src / "rows.parquet")
    (src / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    expected.update({"no_column.parquet": 5, "rows.parquet": 3, "broken.parquet": 1})

    faulthandler.dump_traceback_later(900, exit=True)  # a FIFO that blocks must fail the run, not hang it
    try:
        report, run = _curate(tmp_path, src)
    finally:
        faulthandler.cancel_dump_traceback_later()
    ledger = _ledger(run)
    by_file: dict[str, list[dict]] = {}
    for e in ledger:
        by_file.setdefault(os.path.basename(_file_of(e["id"])), []).append(e)
    assert {name: len(entries) for name, entries in by_file.items()} == expected
    r = report["bad"]
    assert r["read"] == r["input_docs"] == r["accounted"] == sum(expected.values())

    def reasons(name):
        return sorted(e.get("reason", "") for e in by_file[name] if e["bucket"] in ("unreadable", "skipped"))

    def kept_texts(name):
        clean_text = "".join(p.read_text() for p in run.clean.glob("bad.*.jsonl"))
        return [json.loads(x)["text"] for x in clean_text.splitlines() if os.path.basename(
            _file_of(json.loads(x)["id"])) == name]

    assert reasons("good.jsonl.gz") == []
    # truncated: every complete line is judged like any document, kept text is the original text
    trunc = by_file["truncated.jsonl.gz"]
    assert sum(e["bucket"] not in ("unreadable", "skipped") for e in trunc) == complete
    assert [e["reason"] for e in trunc if e["id"].endswith(":damage")] == [
        f"truncated gzip stream (ends before its end-of-stream marker) at line {complete + 1}"]
    assert set(kept_texts("truncated.jsonl.gz")) <= set(trunc_texts) and kept_texts("truncated.jsonl.gz")
    # flipped: nothing of the damaged member is trusted, so the altered line is not kept
    assert all(e["bucket"] == "unreadable" for e in by_file["flipped.jsonl.gz"])
    assert kept_texts("flipped.jsonl.gz") == []
    assert any("CRC or length check failed" in e["reason"] and e["id"].endswith(":damage")
               for e in by_file["flipped.jsonl.gz"])
    multi = by_file["multi.jsonl.gz"]
    trusted = [e for e in multi if e["bucket"] != "unreadable"]
    assert sorted(int(e["id"].rsplit(":", 1)[1]) for e in trusted) == list(range(1, 21))
    assert set(kept_texts("multi.jsonl.gz")) <= set(multi_texts[:20])
    assert reasons("blank.jsonl") == ["blank line", "blank line"]
    assert reasons("empty.jsonl") == reasons("empty.jsonl.gz") == ["empty file"]
    assert reasons("pipe.txt") == ["special file (FIFO): not opened"]
    assert reasons("folder.txt") == ["directory"]
    assert reasons("nul_after_8k.txt") == reasons("random.txt") == ["binary file (NUL bytes)"]
    assert reasons("random_no_nul.txt") == ["binary file (control bytes)"]
    assert reasons("high_bytes.txt") == ["binary file (invalid UTF-8)"]
    assert reasons("noise.txt") == ["noise (random printable characters)"]
    assert reasons("latin1.txt") == [] and not by_file["latin1.txt"][0]["repaired_utf8"]  # decoded, not repaired
    assert by_file["latin1.txt"][0]["encoding"] == "cp1252"
    assert [t[:11] for t in kept_texts("latin1.txt")] == ["Café crème."]  # the accented letters survive
    assert reasons("no_column.parquet") == ["no column 'text' (columns: ['other'])"] * 5
    assert reasons("rows.parquet") == ["column 'text' is not a string"]
    assert len(reasons("broken.parquet")) == 1 and reasons("broken.parquet")[0].startswith("unreadable parquet")
    md = (run.clean / "report.md").read_text()
    assert f"| accounted / input | {sum(expected.values())} / {sum(expected.values())} |" in md
    assert f"| counted when read | {sum(expected.values())} |" in md


def _small_corpus(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"keep{i}.txt").write_text(_prose(i))
    return src


def test_a_document_dropped_between_reading_and_the_ledger_stops_curation(tmp_path, monkeypatch):
    src = _small_corpus(tmp_path)
    report, _ = _curate(tmp_path / "honest", src)
    assert report["bad"]["read"] == report["bad"]["input_docs"] == 6

    judge = curate._judge

    def dropping_judge(doc, rules):
        if not doc.doc_id.endswith("keep3.txt"):  # loses one document after it was read
            yield from judge(doc, rules)

    monkeypatch.setattr(curate, "_judge", dropping_judge)
    with pytest.raises(prepare.AccountingError, match=r"curation lost input of source 'bad': reading counted 6 "
                                                      r"lines, rows and files, the ledger has 5 entries"):
        _curate(tmp_path / "lossy", src)
    run = RunDir(tmp_path / "lossy" / "run")
    assert not run.clean.exists() and stages.marker(run, "curation") is None  # nothing published


def test_binary_detection_looks_at_the_whole_file():
    text = ("def f(x):\n    return x + 1  # café\n" * 400).encode()
    assert files.binary_reason(text) is None
    assert files.binary_reason(text + b"\x00") == "binary file (NUL bytes)"  # far past the first 8 KB
    assert files.binary_reason(text + bytes(range(1, 32)) * 20) == "binary file (control bytes)"
    french = "Le conseil municipal a décidé mardi que le pont sur la rivière serait rénové l'année prochaine. "
    assert files.binary_reason(french.encode("latin-1") * 100) is None  # Latin-1 prose: repaired, not binary


def test_reader_counts_come_from_the_raw_input(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n{"text": "b"}\n{"nope": 1}\nnot json\n')
    reader = files.read_path(str(path), "s")
    docs = []
    with pytest.raises(StopIteration) as stop:
        while True:
            docs.append(next(reader))
    assert stop.value.value == 5 == len(docs)
    assert [d.text or d.error or d.skipped for d in docs] == [
        "a", "blank line", "b", "no string field 'text'", "not JSON: Expecting value"]
