"""A small web crawl built offline from real HTML: pydoc's pages for stdlib modules, wrapped in
site navigation, plus the faults a crawl has. For tests now, and later the demo and benchmarks
(hence benchmarks/, not jaxtrain/: it is fixture-building code, not part of the library, and
tests load it by path like the other benchmark modules).

Records are written by hand rather than with a WARC library, so a fault can be byte-exact: a
truncated final record, a garbled header line.
"""

from __future__ import annotations

import gzip
import importlib
import pydoc
import uuid

NAV = ("<nav><ul><li><a href='/'>Home page of the Example Python Portal</a></li>"
       "<li><a href='/login'>Sign in to your account</a></li><li><a href='/shop'>Visit our shop for mugs</a></li>"
       "</ul></nav>")
FOOTER = "<footer><p>Copyright Example Portal. All rights reserved. Cookie settings. Imprint.</p></footer>"
BOILERPLATE_MARKERS = ("Visit our shop for mugs", "All rights reserved")  # nav/footer text that must not survive

GERMAN = (
    "Die Stadt liegt an einem breiten Fluss, und im Sommer sitzen die Menschen am Ufer und lesen. "
    "Viele Familien fahren am Wochenende mit dem Fahrrad in die Berge, wo die Luft kühler ist. "
    "Im Winter ist es dort oft sehr kalt, aber die Kinder freuen sich über den Schnee und bauen Schneemänner. "
    "Die alte Brücke wurde im neunzehnten Jahrhundert gebaut und ist heute ein beliebtes Ziel für Besucher. "
    "Abends öffnen die kleinen Gasthäuser, in denen man einfache und gute Gerichte aus der Region bekommt. "
    "Wer die Geschichte der Stadt kennenlernen möchte, besucht das Museum neben dem Rathaus.")


def pydoc_html(module: str) -> str:
    """pydoc's HTML page for a stdlib module, with site navigation and a footer around it."""
    obj = importlib.import_module(module)
    page = pydoc.html.page(pydoc.describe(obj), pydoc.html.document(obj, module))
    return page.replace("<body>", "<body>" + NAV, 1).replace("</body>", FOOTER + "</body>", 1)


def german_html() -> str:
    paras = "".join(f"<p>{s}.</p>" for s in GERMAN.split(". ") if s)
    return f"<html><head><title>Die Stadt</title></head><body>{NAV}<article>{paras * 2}</article>{FOOTER}</body></html>"


def record(warc_type: str, uri: str, block: bytes, content_type: str, date: str = "2026-01-01T00:00:00Z",
           record_id: str | None = None, extra: str = "") -> bytes:
    rid = record_id or f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, warc_type + uri)}>"
    head = (f"WARC/1.0\r\nWARC-Type: {warc_type}\r\nWARC-Record-ID: {rid}\r\nWARC-Date: {date}\r\n"
            f"WARC-Target-URI: {uri}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {len(block)}\r\n\r\n")
    return head.encode() + block + b"\r\n\r\n"


def response(uri: str, body: bytes, mime: str = "text/html; charset=utf-8", status: str = "200 OK") -> bytes:
    http = f"HTTP/1.1 {status}\r\nContent-Type: {mime}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    return record("response", uri, http, "application/http; msgtype=response")


def fault_crawl(modules: tuple[str, ...] = ("json", "textwrap", "string")) -> list[tuple[str, bytes]]:
    """(expected outcome, record bytes), in file order. Outcomes: kept, duplicate, language, blocked,
    skipped:<why>, unreadable."""
    recs = [("kept", response(f"https://docs.example.org/{m}.html", pydoc_html(m).encode())) for m in modules]
    recs += [
        ("duplicate", response("https://mirror.example.net/json.html", pydoc_html(modules[0]).encode())),
        ("language", response("https://www.beispiel.de/stadt.html", german_html().encode())),
        ("blocked", response("https://spam.example.com/page.html", pydoc_html("base64").encode())),
        ("skipped:not HTML (image/png)", response("https://docs.example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(64),
                                                  mime="image/png")),
        ("skipped:HTTP 404", response("https://docs.example.org/missing.html", b"<html>Not found</html>",
                                      status="404 Not Found")),
        ("skipped:request record", record("request", "https://docs.example.org/json.html",
                                          b"GET /json.html HTTP/1.1\r\nHost: docs.example.org\r\n\r\n",
                                          "application/http; msgtype=request")),
        ("unreadable", b"WARC/1.0\r\nWARC-Type response\r\n\x00\x01garbled: \r\nContent-Length: zz\r\n\r\n<html></html>\r\n\r\n"),
    ]
    last = response("https://docs.example.org/cut.html", pydoc_html("shlex").encode())
    recs.append(("unreadable", last[: len(last) // 2]))  # the crawler died mid-record
    return recs


def write_warc(path: str, records: list[bytes], gz: bool = True) -> None:
    """One gzip member per record (as crawlers write .warc.gz), or plain."""
    with open(path, "wb") as f:
        for r in records:
            f.write(gzip.compress(r, mtime=0) if gz else r)


def arc_record(uri: str, body: bytes, mime: str = "text/html", status: str = "200 OK") -> bytes:
    """An ARC v1 record: `URL IP date type length`, then the HTTP response."""
    http = f"HTTP/1.0 {status}\r\nContent-Type: {mime}\r\n\r\n".encode() + body
    return f"{uri} 192.0.2.1 20260101000000 {mime} {len(http)}\n".encode() + http + b"\n"
