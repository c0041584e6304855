"""Web sources (#20, first step): a WARC built at test time from real pydoc HTML with a crawl's
faults; every record in the ledger once, provenance kept outside the text, boilerplate removed,
language and URL block-list rules counted, config errors before any work."""

import gzip
import json
import pathlib

import pytest

from jaxtrain.config import load_config
from jaxtrain.data import prepare, web
from jaxtrain.data import sample_crawl as webcrawl
from jaxtrain.errors import ConfigError
from jaxtrain.rundir import RunDir



def _crawl(tmp_path, gz=True):
    recs = webcrawl.fault_crawl()
    path = tmp_path / ("crawl.warc.gz" if gz else "crawl.warc")
    webcrawl.write_warc(str(path), [r for _, r in recs], gz=gz)
    (tmp_path / "block.txt").write_text("# spam sites\nexample.com\n\n")
    return recs, path


def test_reader_accounts_for_every_record_plain_and_gzip(tmp_path):
    for gz in (True, False):
        recs, path = _crawl(tmp_path, gz)
        gen = web.read_warc(str(path), "web")
        docs = []
        while True:
            try:
                docs.append(next(gen))
            except StopIteration as stop:
                n = stop.value
                break
        assert n == len(docs) == len(recs)  # the truncated record is the one damage entry
        for (want, _), doc in zip(recs, docs):
            if want.startswith("skipped:"):
                assert doc.skipped == want.split(":", 1)[1], (want, doc)
            elif want == "unreadable":
                assert doc.text is None and doc.error, (want, doc)
            else:
                assert doc.text and doc.meta["url"].startswith("https://"), (want, doc)
                assert doc.meta["record_id"].startswith("<urn:uuid:") and doc.meta["date"]
                assert doc.meta["url"] not in doc.text
                assert not any(b in doc.text for b in webcrawl.BOILERPLATE_MARKERS), doc.text[:300]
        json_doc = " ".join(docs[0].text.split())
        assert "JSON (JavaScript Object Notation)" in json_doc and "dumps" in json_doc  # the page's own text kept


def test_a_cut_gzip_member_is_one_damage_entry_not_fatal(tmp_path):
    recs, path = _crawl(tmp_path)
    data = path.read_bytes()
    member = len(gzip.compress(recs[-1][1], mtime=0))
    path.write_bytes(data[:-member // 2])  # the last gzip member cut in half
    docs = list(web.read_warc(str(path), "web"))
    # one unreadable entry: the cut record is read up to the cut and named truncated (its HTTP length says so)
    assert len(docs) == len(recs) and docs[-1].text is None and "truncated record" in docs[-1].error
    assert [d.skipped for d in docs[6:9]] == ["not HTML (image/png)", "HTTP 404", "request record"]


def test_arc_and_wet_records(tmp_path):
    page = webcrawl.pydoc_html("json").encode()
    filedesc = b"filedesc://crawl.arc 0.0.0.0 20260101000000 text/plain 9\n1 0 x\nab\n"
    cut = webcrawl.arc_record("http://a.org/cut.html", page)
    arc = (filedesc + webcrawl.arc_record("http://a.org/json.html", page)
           + webcrawl.arc_record("http://a.org/gone.html", b"gone", status="404 Not Found") + cut[:len(cut) // 2])
    (tmp_path / "crawl.arc.gz").write_bytes(gzip.compress(arc))
    docs = list(web.read_warc(str(tmp_path / "crawl.arc.gz"), "web"))
    assert [d.skipped for d in docs[:3:2]] == ["filedesc record", "HTTP 404"] and "truncated" in docs[3].error
    assert docs[1].meta["domain"] == "a.org" and "JavaScript Object Notation" in " ".join(docs[1].text.split())
    wet = webcrawl.record("conversion", "https://b.org/", "Plain text of a page, as WET has it.".encode(), "text/plain")
    (tmp_path / "crawl.warc.wet").write_bytes(wet)
    [doc] = web.read_warc(str(tmp_path / "crawl.warc.wet"), "web")
    assert doc.text.strip() == "Plain text of a page, as WET has it." and doc.meta["url"] == "https://b.org/"


def test_warc_source_through_the_pipeline(tmp_path):
    recs, path = _crawl(tmp_path)
    source = {"name": "web", "type": "warc", "path": str(path), "filters": [], "languages": ["en"],
              "min_language_score": 0.5, "url_blocklist": str(tmp_path / "block.txt")}
    cfg = load_config("tiny", [f"data.sources={json.dumps([source])}", "data.min_chars=100", "data.near_dedup=false"])
    report = prepare.prepare_corpus(cfg.data, RunDir(tmp_path / "run"))["web"]
    clean_dir = RunDir(tmp_path / "run").clean
    ledger = [json.loads(x) for p in sorted(clean_dir.glob("ledger*")) for x in p.read_text().splitlines()]
    assert report["input_docs"] == report["accounted"] == report["read"] == len(ledger) == len(recs)
    assert len({e["id"] for e in ledger}) == len(ledger)
    by_url = {e.get("url"): e for e in ledger if e.get("url")}
    assert by_url["https://www.beispiel.de/stadt.html"]["reason"] == "language"
    assert by_url["https://www.beispiel.de/stadt.html"]["language"] == "de"
    assert by_url["https://spam.example.com/page.html"]["reason"] == "url_blocklist"
    assert by_url["https://mirror.example.net/json.html"]["bucket"] == "duplicate"
    assert by_url["https://docs.example.org/logo.png"]["reason"] == "not HTML (image/png)"
    assert by_url["https://docs.example.org/missing.html"]["reason"] == "HTTP 404"
    assert report["skipped"] == {"HTTP 404": 1, "not HTML (image/png)": 1, "request record": 1}
    assert sum(report["unreadable"].values()) == 2  # the garbled header and the truncated record
    assert report["removed"] == {"language": 1, "url_blocklist": 1}
    assert report["languages"] == {"en": 4, "de": 1}  # 3 kept + the duplicate; the blocked page is not identified
    kept = [json.loads(x) for p in clean_dir.glob("web.*.jsonl") for x in p.read_text().splitlines()]
    assert sorted(r["url"] for r in kept) == [f"https://docs.example.org/{m}.html" for m in ("json", "string", "textwrap")]
    for r in kept:
        assert r["domain"] == "docs.example.org" and r["record_id"] and r["date"] and r["url"] not in r["text"]
    assert "| languages found (documents) | 5 | | en 4, de 1 |" in (clean_dir / "report.md").read_text()


@pytest.mark.parametrize("field, value, message", [
    ("languages", ["en", "xx"], r"data\.sources\[0\]\.languages: unknown code\(s\) \['xx'\]"),
    ("url_blocklist", "/nonexistent/block.txt", r"data\.sources\[0\]\.url_blocklist: file .* does not exist"),
    ("url_blocklist", "/", r"data\.sources\[0\]\.url_blocklist: '/' is not a file"),
    ("url_blocklist", "BINARY", r"data\.sources\[0\]\.url_blocklist: '.*block.bin' is not UTF-8 text"),
])
def test_config_errors_name_the_key(tmp_path, field, value, message):
    if value == "BINARY":
        value = str(tmp_path / "block.bin")
        (tmp_path / "block.bin").write_bytes(gzip.compress(b"x" * 100) + b"\xff\xfe")
    source = {"name": "web", "type": "warc", "path": str(tmp_path / "*.warc.gz"), field: value}
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [f"data.sources={json.dumps([source])}"])


@pytest.mark.parametrize("gz", [True, False])
def test_records_after_a_damaged_stretch_are_read(tmp_path, gz):
    """A garbled header and a bad length in the middle of a file: reading resumes at the next record."""
    page = webcrawl.pydoc_html("textwrap").encode()
    good = [webcrawl.response(f"https://a.org/{i}.html", page) for i in range(3)]
    garbled = b"WARC/1.0\r\nWARC-Type response\r\n\x00\x01garbled: \r\nContent-Length: zz\r\n\r\n<html></html>\r\n\r\n"
    records = [good[0], garbled, good[1], good[2]]
    path = tmp_path / ("c.warc.gz" if gz else "c.warc")
    webcrawl.write_warc(str(path), records, gz=gz)
    docs = list(web.read_warc(str(path), "web"))
    urls = [d.meta["url"] for d in docs if d.text]
    assert urls == ["https://a.org/0.html", "https://a.org/1.html", "https://a.org/2.html"]
    assert [d.error for d in docs if d.text is None] == [web.GARBLED]  # one entry for the garbled record
    assert len(docs) == len(records)


def test_the_sample_crawl_is_accounted_record_for_record(tmp_path):
    """The offline crawl the demo and the ablation use: its manifest and the ledger agree."""
    m = webcrawl.build(str(tmp_path / "crawl"), modules=12, files=2)
    assert webcrawl.build(str(tmp_path / "crawl"), modules=12, files=2) == m  # the same arguments: reused
    docs = [d for p in sorted((tmp_path / "crawl").glob("*.warc.gz")) for d in web.read_warc(str(p), "web")]
    kinds = m["kinds"]
    assert len(docs) == m["records"]  # one ledger entry per record: damage is never double-counted
    skipped = [d.skipped for d in docs if d.skipped]
    assert skipped.count("request record") == kinds["request"] and skipped.count("metadata record") == kinds["metadata"]
    assert skipped.count("HTTP 404") == kinds["not_found"] and skipped.count("HTTP 301") == kinds["redirect"]
    assert sum(s.startswith("not HTML") for s in skipped) == kinds["binary"]
    errors = [d.error for d in docs if d.text is None and not d.skipped]
    assert errors.count(web.GARBLED) == kinds["garbled"] and sum("truncated record" in e for e in errors) == 1
    pages = kinds["page"] + kinds.get("guide", 0) + kinds.get("mirror", 0) + kinds.get("near_copy", 0) + kinds["spam"]
    assert sum(1 for d in docs if d.text is not None) == pages + sum(v for k, v in kinds.items() if k.startswith("language_")) + 1  # + the bad-length record, whose payload is whole
    assert not any(b in d.text for d in docs if d.text for b in webcrawl.BOILERPLATE_MARKERS)
