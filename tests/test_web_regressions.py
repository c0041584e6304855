"""Regressions found by a new user trying `type: warc` on hand-made crawls (#20): a FIFO the glob matches, a
WARC length past its record, records of one gzip stream, a directory in the glob."""

import gzip
import os
import threading

import pytest

from jaxtrain.data import web


def _http(body: bytes) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def _record(payload: bytes, url: str, n: int, extra: int = 0) -> bytes:
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-00000000000{n}>\r\n"
            f"WARC-Date: 2024-03-01T12:00:00Z\r\nWARC-Target-URI: {url}\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(payload) + extra}\r\n\r\n")
    return head.encode() + payload + b"\r\n\r\n"


def _page(i: int) -> bytes:
    return _http(f"<html><body><p>Page {i} has a sentence of its own. It says something else too.</p></body></html>".encode())


def test_a_fifo_in_a_warc_glob_is_not_opened(tmp_path):
    fifo = tmp_path / "pipe.warc"
    os.mkfifo(fifo)
    out = []
    t = threading.Thread(target=lambda: out.extend(web.read_warc(str(fifo), "w")), daemon=True)
    t.start()
    t.join(10)
    blocked = t.is_alive()
    if blocked:  # unblock the reader so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
    assert not blocked


def test_a_length_past_the_record_does_not_put_the_next_header_in_text(tmp_path):
    path = tmp_path / "b.warc"
    path.write_bytes(_record(_page(0), "http://a.example.com/0", 1, extra=300)
                     + _record(_page(1), "http://a.example.com/next", 2))
    texts = [d.text for d in web.read_warc(str(path), "w") if d.text]
    assert not any("WARC-Target-URI" in t or "a.example.com/next" in t for t in texts)


def test_records_of_one_gzip_stream_have_distinct_ids(tmp_path):
    path = tmp_path / "e.warc.gz"
    path.write_bytes(gzip.compress(b"".join(_record(_page(i), f"http://a.example.com/{i}", i) for i in range(3))))
    ids = [d.doc_id for d in web.read_warc(str(path), "w")]
    assert len(ids) == 3 and len(set(ids)) == 3


def test_a_directory_the_warc_glob_matches_has_its_ledger_entry(tmp_path):
    (tmp_path / "sub.warc.gz").mkdir()
    assert [(d.doc_id, d.skipped) for d in web.read_warc(str(tmp_path / "sub.warc.gz"), "w")] == [
        (str(tmp_path / "sub.warc.gz"), "directory")]
