"""jaxtrain's curation and web extraction against datatrove's (issues #15, #20): the same documents
and WARC files through the same published rules, decisions compared, and MB/s per core, in one run.

    pip install -r benchmarks/requirements-datatrove.txt    # datatrove, spacy: benchmark only
    python benchmarks/curation_vs_datatrove.py [--docs 3000] [--near-dups 300] [--repeats 3] [--warc 300] \
        [--out benchmarks/results/curation_vs_datatrove.json]

Documents: the embedded default's prose-like text (package descriptions and licenses, pydoc topics,
module docstrings) of at least 200 characters, normalized once with jaxtrain's
`clean.normalize` so both sides see identical text, plus `--near-dups` edited copies (1-5% of
the words replaced) so MinHash has duplicates to find.

1. Each filter alone on every document: C4 quality, Gopher repetition, Gopher quality, FineWeb
   quality (jaxtrain.data.filters and datatrove's C4QualityFilter, GopherRepetitionFilter,
   GopherQualityFilter, FineWebQualityFilter with their defaults). Per filter: documents kept by
   each, agreement, and the disagreements by (jaxtrain's check, datatrove's check) with examples.
2. End to end, FineWeb's order (Gopher repetition, Gopher quality, C4, FineWeb) then MinHash dedup
   (word 5-grams, 14 buckets x 8 hashes), the way each is run in production on one core:
   jaxtrain's Beam curation (`curate.run`, DirectRunner, 1 worker; exact dedup and PII off to
   match) and datatrove's FineWeb example pipeline (JsonlReader -> filters -> JsonlWriter, then
   MinHash stages 1-4, LocalPipelineExecutor with workers=1). Documents kept by each, agreement,
   the near-duplicates each removed, and MB/s of input per core (medians over --repeats).
3. Filters alone, MB/s per core: the four rules as functions (jaxtrain) and as filter objects
   called directly (datatrove), no I/O.
4. Web (`--warc PAGES`, 0 skips): pydoc's HTML pages of that many stdlib modules, wrapped in site
   navigation (jaxtrain.data.sample_crawl), written offline into 4 .warc.gz files; on those files
   jaxtrain's `web.read_warc` (fastwarc + resiliparse) against datatrove's `WarcReader` (warcio) and
   `Trafilatura` extractor, each on one core: MB of .warc.gz per second, documents and characters
   out; then each side's four rules on its own extracted text, and each rule alone on both sides
   over jaxtrain's extraction (decisions on real web pages).

Where the two disagree, the report names the check; which side follows the published rule is
written up in BENCHMARKS.md (reference: TFDS c4_utils for C4, Gopher Table A1, FineWeb's code).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ORDER = ("gopher_repetition", "gopher_quality", "c4", "fineweb")  # FineWeb's pipeline order


def documents(n: int, near_dups: int, seed: int = 0) -> list[dict]:
    """[{"id", "text"}]: embedded prose-like documents, normalized, and edited copies of some."""
    import itertools

    import numpy as np

    from jaxtrain.data import clean, corpus

    docs = []
    for d in itertools.chain(corpus.embedded_source("package_metadata"), corpus.embedded_source("stdlib_docs")):
        text = clean.normalize(d.text) if d.text else ""
        if len(text) >= 200:
            docs.append({"id": d.doc_id, "text": text[:200_000]})
        if len(docs) >= n:
            break
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(docs), min(near_dups, len(docs)), replace=False):
        words = docs[i]["text"].split(" ")
        for k in rng.choice(len(words), max(1, int(len(words) * rng.uniform(0.01, 0.05))), replace=False):
            words[k] = "edited"
        docs.append({"id": f"{docs[i]['id']}#copy", "text": " ".join(words)})
    return docs


def _datatrove_filters() -> dict:
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)

    return {"gopher_repetition": GopherRepetitionFilter(), "gopher_quality": GopherQualityFilter(),
            "c4": C4QualityFilter(), "fineweb": FineWebQualityFilter()}


def _datatrove_check(f, text: str) -> tuple[str | None, str]:
    """(check failed or None, text after the filter), as datatrove's filter step sees it."""
    from datatrove.data import Document

    doc = Document(text=text, id="x")
    verdict = f.filter(doc)
    if verdict is True:
        return None, doc.text
    return (verdict[1] if isinstance(verdict, tuple) else "removed"), doc.text


def _jaxtrain_check(name: str, text: str) -> tuple[str | None, str]:
    from jaxtrain.data import filters

    failed, out = filters.apply_rules(text, (name,))
    return (failed.split(":", 1)[1] if failed else None), out


def per_filter(docs: list[dict]) -> dict:
    """Each rule alone on every document, both sides; agreement and disagreements."""
    theirs = _datatrove_filters()
    out = {}
    for name in ORDER:
        n_agree, kept = 0, collections.Counter()
        disagree, examples = collections.Counter(), {}
        for d in docs:
            a, a_text = _jaxtrain_check(name, d["text"])
            b, b_text = _datatrove_check(theirs[name], d["text"])
            kept["jaxtrain"] += a is None
            kept["datatrove"] += b is None
            kept["both, same text out"] += a is None and b is None and a_text.strip() == b_text.strip()
            if (a is None) == (b is None):
                n_agree += 1
            else:
                key = f"jaxtrain {a or 'keeps'} / datatrove {b or 'keeps'}"
                disagree[key] += 1
                examples.setdefault(key, d["id"])
        out[name] = {"docs": len(docs), "kept_jaxtrain": kept["jaxtrain"], "kept_datatrove": kept["datatrove"],
                     "kept_by_both_same_text": kept["both, same text out"],  # C4 rewrites: the same lines kept?
                     "agreement": round(n_agree / len(docs), 4),
                     "disagreements": dict(disagree.most_common()), "examples": examples}
    return out


def filter_speed(docs: list[dict], repeats: int) -> dict:
    """MB/s per core of the four rules on every document, no I/O (each rule on the original text)."""
    mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    theirs = _datatrove_filters()

    def jaxtrain_rules():
        for d in docs:
            for name in ORDER:
                _jaxtrain_check(name, d["text"])

    def datatrove_rules():
        for d in docs:
            for name in ORDER:
                _datatrove_check(theirs[name], d["text"])

    t_ours, t_theirs = (_median_time(f, repeats) for f in (jaxtrain_rules, datatrove_rules))
    return {"mb": round(mb, 2), "jaxtrain_mb_per_s": round(mb / t_ours, 2),
            "datatrove_mb_per_s": round(mb / t_theirs, 2), "jaxtrain_speedup": round(t_theirs / t_ours, 2)}


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _write_input(docs: list[dict], directory: pathlib.Path) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "docs.jsonl"
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    return path


def jaxtrain_end_to_end(docs: list[dict], work: pathlib.Path) -> tuple[set[str], set[str], float]:
    """(kept ids, ids removed as near-duplicates, seconds): jaxtrain's Beam curation on one worker."""
    from jaxtrain.config import load_config
    from jaxtrain.data import clean, curate

    path = _write_input(docs, work / "in")
    cfg = load_config("tiny", [
        f"data.sources=[{{name: docs, type: files, path: '{path}', content: prose, pii: false, "
        f"filters: {list(ORDER)}}}]",
        "data.min_chars=1", "data.max_chars=100000000", "data.exact_dedup=false", "data.near_dedup=true",
        "data.curate_workers=1"])
    start = time.perf_counter()
    curate.run(cfg.data, work / "out", 1)
    seconds = time.perf_counter() - start
    index = {f"{path}:{i}": d["id"] for i, d in enumerate(docs, 1)}
    kept, near = set(), set()
    for ledger in clean.ledger_files(work / "out"):
        for line in ledger.read_text().splitlines():
            e = json.loads(line)
            if e["bucket"] == "kept":
                kept.add(index[e["id"]])
            elif e["bucket"] == "duplicate":
                near.add(index[e["id"]])
    return kept, near, seconds


def _xxhash_str_shim() -> None:
    """datatrove 0.10.1 hashes shingles as str with xxhash, which xxhash < 4 encoded as UTF-8 (its
    `processing` extra pins xxhash<4); xxhash 4 (in this venv, for datasets) wants bytes. Encode
    first: the same digests as with xxhash 3."""
    import xxhash
    from datatrove.utils.hashes import xxhash as dt_xxhash

    if int(xxhash.VERSION.split(".")[0]) >= 4:
        dt_xxhash.xxhash32 = lambda data: xxhash.xxh32_intdigest(data.encode() if isinstance(data, str) else data)
        dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)


def datatrove_end_to_end(docs: list[dict], work: pathlib.Path) -> tuple[set[str], set[str], float]:
    """(kept ids, ids removed by MinHash, seconds): datatrove's FineWeb pipeline on one worker."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    _xxhash_str_shim()
    _write_input(docs, work / "in")
    config = MinhashConfig()  # 5-grams, 14 buckets x 8 hashes: FineWeb's, and jaxtrain's default
    f = _datatrove_filters()

    def run(pipeline, tasks=1, name="stage"):
        with contextlib.redirect_stderr(io.StringIO()):  # datatrove logs every task's steps and stats to stderr
            LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1,
                                  logging_dir=str(work / "logs" / name)).run()

    start = time.perf_counter()
    run([JsonlReader(str(work / "in")), f["gopher_repetition"], f["gopher_quality"], f["c4"], f["fineweb"],
         JsonlWriter(str(work / "filtered"), compression=None)], name="filter")
    if list((work / "filtered").glob("*.jsonl")):  # (at tiny sizes the filters may keep nothing)
        run([JsonlReader(str(work / "filtered")), MinhashDedupSignature(str(work / "sigs"), config=config)],
            name="sigs")
        run([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
            tasks=config.num_buckets, name="buckets")
        run([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)], name="cluster")
        run([JsonlReader(str(work / "filtered")), MinhashDedupFilter(str(work / "remove")),
             JsonlWriter(str(work / "out"), compression=None)], name="dedup")
    seconds = time.perf_counter() - start
    ids = lambda folder: {json.loads(x)["id"] for p in sorted((work / folder).glob("*.jsonl"))  # noqa: E731
                          for x in p.read_text().splitlines()}
    kept = ids("out")
    return kept, ids("filtered") - kept, seconds


def end_to_end(docs: list[dict], repeats: int) -> dict:
    mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    times = collections.defaultdict(list)
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            ours_kept, ours_near, t = jaxtrain_end_to_end(docs, pathlib.Path(tmp) / "jaxtrain")
            times["jaxtrain"].append(t)
            theirs_kept, theirs_near, t = datatrove_end_to_end(docs, pathlib.Path(tmp) / "datatrove")
            times["datatrove"].append(t)
    ids = [d["id"] for d in docs]
    same = sum((i in ours_kept) == (i in theirs_kept) for i in ids)
    both_filtered = ({i for i in ids if i in ours_kept or i in ours_near}
                     & {i for i in ids if i in theirs_kept or i in theirs_near})
    t_ours, t_theirs = statistics.median(times["jaxtrain"]), statistics.median(times["datatrove"])
    return {
        "docs": len(docs), "mb": round(mb, 2),
        "kept_jaxtrain": len(ours_kept), "kept_datatrove": len(theirs_kept), "kept_by_both": len(ours_kept & theirs_kept),
        "agreement": round(same / len(ids), 4),
        "near_dups_jaxtrain": len(ours_near), "near_dups_datatrove": len(theirs_near),
        "near_dup_decisions_agree_on_docs_both_kept_through_filters": round(
            sum((i in ours_near) == (i in theirs_near) for i in both_filtered) / max(len(both_filtered), 1), 4),
        "injected_copies_removed": {"jaxtrain": sum(i.endswith("#copy") for i in ours_near),
                                    "datatrove": sum(i.endswith("#copy") for i in theirs_near)},
        "jaxtrain_s": round(t_ours, 2), "datatrove_s": round(t_theirs, 2),
        "jaxtrain_mb_per_s_per_core": round(mb / t_ours, 3), "datatrove_mb_per_s_per_core": round(mb / t_theirs, 3),
        "only_jaxtrain_keeps": sorted(ours_kept - theirs_kept)[:10],
        "only_datatrove_keeps": sorted(theirs_kept - ours_kept)[:10],
    }


def stdlib_warcs(directory: pathlib.Path, pages: int, files: int = 4) -> list[pathlib.Path]:
    """WARC files (.warc.gz, one gzip member per record) of pydoc's HTML pages for `pages` stdlib modules,
    wrapped in site navigation (jaxtrain.data.sample_crawl): real HTML, built offline. Each response carries
    WARC-Identified-Payload-Type, as Common Crawl's do (datatrove's reader filters on it)."""
    from jaxtrain.data import sample_crawl as crawl  # after the platform flags, like the other jaxtrain imports here

    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for m in crawl.stdlib_modules()[:pages]:
        body = crawl.pydoc_html(m).encode()
        http = (f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
        records.append(crawl.record("response", f"https://docs.example.org/{m}.html", http,
                                    "application/http; msgtype=response",
                                    extra="WARC-Identified-Payload-Type: text/html\r\n"))
    paths = [directory / f"crawl-{i}.warc.gz" for i in range(files)]
    for i, path in enumerate(paths):
        crawl.write_warc(str(path), records[i::files])
    return paths


def _chardet_magic_shim() -> None:
    """datatrove's WARC record parser imports cchardet (for pages that are not UTF-8) and python-magic (for
    records without WARC-Identified-Payload-Type); neither is in this venv (faust-cchardet and python-magic
    need native builds or libmagic). cchardet's `detect` is stood in for by charset_normalizer's (never
    reached either: every page here is UTF-8); magic is never reached (every record names its type)."""
    import sys
    import types

    import charset_normalizer

    if "cchardet" not in sys.modules:
        sys.modules["cchardet"] = types.SimpleNamespace(detect=charset_normalizer.detect)
    if "magic" not in sys.modules:
        def from_buffer(*_, **__):
            raise RuntimeError("benchmark WARC records name their payload type; python-magic is not installed")
        sys.modules["magic"] = types.SimpleNamespace(from_buffer=from_buffer)


def jaxtrain_web(paths: list[pathlib.Path]) -> list[dict]:
    """jaxtrain's reader and extractor (fastwarc, resiliparse): [{"id": url, "text"}] of non-empty pages."""
    from jaxtrain.data import web

    out = []
    for path in paths:
        for doc in web.read_warc(str(path), "web"):
            if doc.text:
                out.append({"id": doc.meta["url"], "text": doc.text})
    return out


def datatrove_web(paths: list[pathlib.Path]) -> list[dict]:
    """datatrove's WarcReader (warcio) and Trafilatura extractor with their defaults, as its pipeline runs
    them: [{"id": url, "text"}] of the documents they pass on."""
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    _chardet_magic_shim()
    reader = object.__new__(WarcReader)  # past PipelineStep.__new__'s check for the two shimmed distributions
    reader.__init__(str(paths[0].parent), glob_pattern="*.warc.gz")
    docs = reader.run()
    with contextlib.redirect_stderr(io.StringIO()):
        return [{"id": d.metadata["url"], "text": d.text} for d in Trafilatura().run(docs)]


def web(paths: list[pathlib.Path], repeats: int) -> dict:
    """Read and extract the same WARC files, each side on one core: MB of WARC input (as stored, gzip) per
    second, documents and characters out (medians over repeats after an untimed warm-up). Then end to end:
    each side's four rules, in FineWeb's order, on its own extracted text (pages kept, same decision per
    URL); and each rule alone on the same text (jaxtrain's extraction) on both sides."""
    mb = sum(p.stat().st_size for p in paths) / 1e6
    times, out = collections.defaultdict(list), {}
    jaxtrain_web(paths[:1]), datatrove_web(paths[:1])  # warm-up, untimed: imports, trafilatura's worker
    for _ in range(repeats):
        for side, fn in (("jaxtrain", jaxtrain_web), ("datatrove", datatrove_web)):
            t = time.perf_counter()
            out[side] = fn(paths)
            times[side].append(time.perf_counter() - t)
    theirs = _datatrove_filters()
    kept = {"jaxtrain": {d["id"] for d in out["jaxtrain"] if _jaxtrain_passes(d["text"])},
            "datatrove": {d["id"] for d in out["datatrove"] if _datatrove_passes(d["text"], theirs)}}
    t_ours, t_theirs = statistics.median(times["jaxtrain"]), statistics.median(times["datatrove"])
    chars = {side: sum(len(d["text"]) for d in docs) for side, docs in out.items()}
    urls = {d["id"] for docs in out.values() for d in docs}
    return {
        "warc_files": len(paths), "warc_mb": round(mb, 2),
        "docs_out_jaxtrain": len(out["jaxtrain"]), "docs_out_datatrove": len(out["datatrove"]),
        "chars_out_jaxtrain": chars["jaxtrain"], "chars_out_datatrove": chars["datatrove"],
        "jaxtrain_s": round(t_ours, 2), "datatrove_s": round(t_theirs, 2),
        "jaxtrain_mb_per_s_per_core": round(mb / t_ours, 3), "datatrove_mb_per_s_per_core": round(mb / t_theirs, 3),
        "jaxtrain_speedup": round(t_theirs / t_ours, 2),
        "after_filters": {"kept_jaxtrain": len(kept["jaxtrain"]), "kept_datatrove": len(kept["datatrove"]),
                          "kept_by_both": len(kept["jaxtrain"] & kept["datatrove"]),
                          "agreement": round(sum((u in kept["jaxtrain"]) == (u in kept["datatrove"]) for u in urls)
                                             / max(len(urls), 1), 4)},
        # each rule alone, both sides' rules on the same text (jaxtrain's extraction): agreement on web pages
        "rules_on_extracted_text": {name: {k: r[k] for k in ("kept_jaxtrain", "kept_datatrove", "agreement",
                                                              "disagreements")}
                                    for name, r in per_filter(out["jaxtrain"]).items()},
    }


def _jaxtrain_passes(text: str) -> bool:
    """jaxtrain's four rules in FineWeb's order (C4's rewritten text goes on to FineWeb, as in datatrove)."""
    from jaxtrain.data import filters

    return filters.apply_rules(text, ORDER)[0] is None


def _datatrove_passes(text: str, theirs: dict | None = None) -> bool:
    theirs = theirs or _datatrove_filters()
    for name in ORDER:
        failed, text = _datatrove_check(theirs[name], text)
        if failed:
            return False
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--near-dups", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warc", type=int, default=300, metavar="PAGES",
                        help="WARC section: pydoc pages of this many stdlib modules in 4 .warc.gz files (0: skip)")
    parser.add_argument("--out", default="benchmarks/results/curation_vs_datatrove.json")
    args = parser.parse_args(argv)
    import datatrove

    docs = documents(args.docs, args.near_dups)
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d"), "datatrove": datatrove.__version__ if hasattr(
                  datatrove, "__version__") else "0.10.1",
              "per_filter": per_filter(docs)}
    print(json.dumps(result["per_filter"], indent=1), flush=True)
    result["filters_only"] = filter_speed(docs, args.repeats)
    print(json.dumps(result["filters_only"], indent=1), flush=True)
    result["end_to_end"] = end_to_end(docs, args.repeats)
    print(json.dumps(result["end_to_end"], indent=1), flush=True)
    if args.warc:
        with tempfile.TemporaryDirectory() as tmp:
            result["web"] = web(stdlib_warcs(pathlib.Path(tmp), args.warc), args.repeats)
        print(json.dumps(result["web"], indent=1), flush=True)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
