"""A web crawl built offline from real HTML, with the faults a crawl has: for the demo, the tests and
the benchmarks (nothing may be downloaded at run time).

    python -m jaxtrain.data.sample_crawl OUT_DIR [--modules N] [--files F]

The pages are pydoc's HTML for the standard library's modules (real documentation every Python has:
API listings) and guide pages built from each module's function and class docstrings (prose), wrapped
in site navigation and a footer, served the way Common Crawl stores them (request, response
and metadata records). Around them: mirrors of pages on other hosts (exact duplicates after
extraction), lightly edited copies (near duplicates), keyword-stuffed shop and casino pages and link
farms (spam), pages in German, French, Spanish, Italian and Dutch, images and PDFs, 404s and
redirects, and per file a garbled header, a bad length or a record cut off mid-way. Everything is
seeded: the same arguments write the same bytes, and `manifest.json` says how many of each kind.

Records are written by hand rather than with a WARC library, so a fault can be byte-exact.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import html
import importlib
import inspect
import io
import json
import pathlib
import pkgutil
import pydoc
import random
import re
import sys
import uuid
import warnings

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
    page = re.sub(r'<a href="file:[^"]*">[^<]*</a>', "", page)  # this machine's paths: not part of the page
    return page.replace("<body>", "<body>" + NAV, 1).replace("</body>", FOOTER + "</body>", 1)


def article_html(module: str) -> str | None:
    """A guide page for a module: the docstrings of its own public functions and classes as sections
    (prose, unlike pydoc's API listing with its repeated inherited-member blocks). None when too thin."""
    obj = importlib.import_module(module)
    sections = []
    for name, member in sorted(vars(obj).items()):
        doc = inspect.getdoc(member) if (inspect.isfunction(member) or inspect.isclass(member)) else None
        if name.startswith("_") or getattr(member, "__module__", None) != module or not doc or len(doc) < 80:
            continue
        paras = "".join(f"<p>{html.escape(p.strip())}</p>" for p in doc.split("\n\n") if p.strip())
        sections.append(f"<section><h2>{html.escape(name)}</h2>{paras}</section>")
    if sum(map(len, sections)) < 1500:
        return None
    return (f"<html><head><title>{module}: a guide</title></head><body>{NAV}<article><h1>Working with {module}</h1>"
            f"{''.join(sections)}</article>{FOOTER}</body></html>")


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


# Modules whose import has side effects (opens a browser, prints, needs a display) or that are not docs.
_DENY = ("antigravity", "this", "__hello__", "__phello__", "idlelib", "tkinter", "turtle", "turtledemo", "test",
         "lib2to3", "ensurepip", "venv", "pydoc_data", "xxlimited", "_", "msilib", "winreg", "winsound", "msvcrt",
         "nturl2path", "encodings", "sre_", "crypt", "nis", "spwd", "ossaudiodev", "audioop", "readline", "curses")

OTHER_LANGUAGES = {
    "de": GERMAN,
    "fr": ("La ville se trouve au bord d'un large fleuve, et en été les habitants lisent sur les quais. "
           "Le marché du samedi attire des paysans de toute la région, qui vendent des fruits et du fromage. "
           "La vieille église a été construite au douzième siècle et ses vitraux sont célèbres. "
           "Les enfants vont à l'école à pied, car les rues du centre sont fermées aux voitures. "
           "Le soir, les cafés restent ouverts tard et on y parle de politique et de football. "
           "Pour découvrir l'histoire de la ville, il faut visiter le musée près de la mairie."),
    "es": ("El pueblo está junto a un río ancho, y en verano la gente pasea por la orilla al atardecer. "
           "Los domingos por la mañana se celebra un mercado con frutas, verduras y pan recién hecho. "
           "La iglesia antigua fue construida en el siglo trece y conserva un claustro muy bonito. "
           "Muchas familias viajan a la sierra durante las vacaciones para escapar del calor. "
           "Los niños juegan en la plaza mientras los abuelos conversan a la sombra de los árboles. "
           "Quien quiera conocer la historia del pueblo puede visitar el museo junto al ayuntamiento."),
    "it": ("La città sorge sulle rive di un grande fiume, e d'estate la gente passeggia lungo gli argini. "
           "Ogni sabato in piazza c'è un mercato dove i contadini vendono frutta, verdura e formaggi. "
           "La cattedrale fu costruita nel dodicesimo secolo e custodisce affreschi molto famosi. "
           "I bambini vanno a scuola a piedi, perché il centro storico è chiuso al traffico. "
           "La sera i ristoranti servono piatti semplici preparati con prodotti della regione. "
           "Chi vuole conoscere la storia della città può visitare il museo accanto al municipio."),
    "nl": ("De stad ligt aan een brede rivier, en in de zomer zitten de mensen aan het water te lezen. "
           "Op zaterdag is er een markt waar boeren groente, fruit en kaas uit de streek verkopen. "
           "De oude kerk werd in de twaalfde eeuw gebouwd en heeft prachtige glas-in-loodramen. "
           "De meeste mensen gaan met de fiets naar hun werk, ook als het regent. "
           "In de winter schaatsen kinderen op de grachten wanneer het lang genoeg vriest. "
           "Wie meer over de geschiedenis wil weten, bezoekt het museum naast het stadhuis."),
}

_SPAM_SENTENCES = (
    "Buy {p} online at the lowest price and get free shipping today.",
    "Our {p} is the best {a} choice for {w} in {y}.",
    "Click here to claim your {n} dollar bonus before the offer ends!",
    "Thousands of {w} already trust {b} for {p}.",
    "Limited time only: save {n}% on {p} when you order now.",
    "Top {n} {p} reviews: why {b} wins every single time.",
    "Sign up now and win a {x} at {b} Casino, the {a} casino online.",
    "Cheap {p}, discount {p}, best {p} deals, {p} coupon codes.",
    "Don't miss out, {w} love our {a} {p} and so will you.",
    "Call now, operators are standing by to sell you {p}.",
    "{b} is rated number one for {p} by {w} everywhere.",
    "Get rich fast with {b}: no experience needed, start earning today!",
)
_SPAM_SLOTS = {
    "p": ("replica watches", "diet pills", "cheap hosting", "car insurance", "crypto tokens", "payday loans",
          "designer bags", "VPN deals", "weight loss tea", "online degrees", "phone cases", "hair growth serum"),
    "a": ("top rated", "cheapest", "most trusted", "amazing", "number one", "unbeatable", "official", "exclusive"),
    "w": ("customers", "moms", "students", "gamers", "investors", "shoppers", "doctors", "drivers"),
    "b": ("MegaDeals", "BestBuyNow", "CashKing", "LuckyStar", "SuperSaver", "PrimeOffers", "GoldRush", "WinBig"),
    "x": ("new car", "luxury cruise", "free iPhone", "jackpot", "gift card", "vacation"),
}


def stdlib_modules() -> list[str]:
    """The standard-library modules (and their public submodules) that import cleanly here, sorted."""
    warnings.simplefilter("ignore")
    found: list[str] = []

    def load(name: str) -> object | None:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                return importlib.import_module(name)
        except Exception:  # not built on this platform, needs a device: not a page
            return None

    for name in sorted(n for n in sys.stdlib_module_names if not n.startswith(_DENY)):
        module = load(name)
        if module is None:
            continue
        found.append(name)
        for info in pkgutil.iter_modules(getattr(module, "__path__", []), name + "."):
            if not info.name.rsplit(".", 1)[-1].startswith(("_", "test")) and load(info.name) is not None:
                found.append(info.name)
    return found


def spam_html(rng: random.Random) -> str:
    """A keyword-stuffed shop page: varied sentences, so only some rules catch it."""
    sentences = []
    for _ in range(rng.randint(25, 90)):
        t = rng.choice(_SPAM_SENTENCES)
        sentences.append(t.format(**{k: rng.choice(v) for k, v in _SPAM_SLOTS.items()}, n=rng.randint(2, 90),
                                  y=rng.randint(2019, 2026)))
    paras = "".join("<p>" + " ".join(sentences[i:i + 4]) + "</p>" for i in range(0, len(sentences), 4))
    return f"<html><head><title>Best deals</title></head><body>{NAV}<article>{paras}</article>{FOOTER}</body></html>"


def link_farm_html(rng: random.Random) -> str:
    links = "".join(f"<li><a href='/go/{rng.randint(0, 10**6)}'>{rng.choice(_SPAM_SLOTS['a'])} "
                    f"{rng.choice(_SPAM_SLOTS['p'])}</a></li>" for _ in range(rng.randint(40, 120)))
    return f"<html><body>{NAV}<h1>Links</h1><ul>{links}</ul>{FOOTER}</body></html>"


def language_html(lang: str, rng: random.Random) -> str:
    sentences = [x for x in OTHER_LANGUAGES[lang].split(". ") if x]
    paras = "".join("<p>" + ". ".join(rng.sample(sentences, len(sentences))) + ".</p>" for _ in range(rng.randint(2, 5)))
    return f"<html lang='{lang}'><body>{NAV}<article>{paras}</article>{FOOTER}</body></html>"


def edited(html: str, rng: random.Random, share: float = 0.2) -> str:
    """A near duplicate: a share of the ' the ' occurrences become ' this ' (text edits; tags untouched)."""
    parts = html.split(" the ")
    return parts[0] + "".join((" this " if rng.random() < share else " the ") + part for part in parts[1:])


def metadata(uri: str) -> bytes:
    return record("metadata", uri, b"fetchTimeMs: 120\r\ncharset-detected: UTF-8\r\n", "application/warc-fields")


def request(uri: str) -> bytes:
    host = uri.split("/")[2]
    return record("request", uri, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
                  "application/http; msgtype=request")


def build(out_dir: str, modules: int = 0, files: int = 8, seed: int = 0, spam: float = 0.75) -> dict:
    """Write the crawl (files `crawl-NNNNN.warc.gz`) and manifest.json; returns the manifest. `modules`:
    how many stdlib modules' pages (0 = all that import here); `spam`: spam pages per module. Skipped when
    the manifest says the same arguments were already written."""
    out = pathlib.Path(out_dir)
    args = {"modules": modules, "files": files, "seed": seed, "python": sys.version.split()[0],
            **({"spam": spam} if spam != 0.75 else {})}  # (the default keeps earlier manifests valid)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()).get("args") == args:
        return json.loads(manifest_path.read_text())
    rng = random.Random(seed)
    names = stdlib_modules()
    names = names[:modules] if modules else names
    pages: list[tuple[str, str, bytes]] = []  # (kind, uri, response record)
    for name in names:
        html = pydoc_html(name)
        pages.append(("page", f"https://docs.example.org/library/{name}.html", response(
            f"https://docs.example.org/library/{name}.html", html.encode())))
        guide = article_html(name)
        if guide is not None:
            uri = f"https://guides.example.org/{name.replace('.', '/')}/"
            pages.append(("guide", uri, response(uri, guide.encode())))
        if rng.random() < 0.25:
            mirror = html.replace(NAV, NAV.replace("Example Python Portal", "Python Mirror Network"))
            pages.append(("mirror", f"https://mirror.example.net/py/{name}.html",
                          response(f"https://mirror.example.net/py/{name}.html", mirror.encode())))
        elif rng.random() < 0.2:
            pages.append(("near_copy", f"https://old.example.org/{name}.html",
                          response(f"https://old.example.org/{name}.html", edited(html, rng).encode())))
    for i in range(int(len(names) * spam)):
        uri = f"https://deals{i % 37}.example.com/offer/{i}.html"
        body = spam_html(rng) if rng.random() < 0.8 else link_farm_html(rng)
        pages.append(("spam", uri, response(uri, body.encode())))
    for i in range(len(names) // 4):
        lang = sorted(OTHER_LANGUAGES)[i % len(OTHER_LANGUAGES)]
        uri = f"https://www.example.{lang}/seite/{i}.html"
        pages.append((f"language_{lang}", uri, response(uri, language_html(lang, rng).encode())))
    for i in range(max(2, len(names) // 15)):
        uri = f"https://docs.example.org/static/figure{i}.png"
        pages.append(("binary", uri, response(uri, b"\x89PNG\r\n\x1a\n" + rng.randbytes(rng.randint(200, 4000)),
                                              mime="image/png")))
        uri = f"https://docs.example.org/static/manual{i}.pdf"
        pages.append(("binary", uri, response(uri, b"%PDF-1.4\n" + rng.randbytes(2000), mime="application/pdf")))
    for i in range(max(2, len(names) // 15)):
        uri = f"https://docs.example.org/old/{i}.html"
        pages.append(("not_found", uri, response(uri, b"<html><body>Not found</body></html>", status="404 Not Found")))
        uri = f"https://docs.example.org/moved/{i}.html"
        pages.append(("redirect", uri, response(uri, b"", status="301 Moved Permanently")))
    rng.shuffle(pages)
    counts: dict[str, int] = {}
    out.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        records: list[bytes] = []
        for kind, uri, resp in pages[f::files]:
            records += [request(uri), resp, metadata(uri)]
            counts[kind] = counts.get(kind, 0) + 1
        counts["request"] = counts.get("request", 0) + len(pages[f::files])
        counts["metadata"] = counts.get("metadata", 0) + len(pages[f::files])
        # The faults of a real crawl: a garbled header in every file; one file cut mid-record (the
        # crawler died), one with a Content-Length larger than the record.
        records.insert(len(records) // 2, b"WARC/1.0\r\nWARC-Type response\r\n\x00\x01garbled: \r\n"
                                          b"Content-Length: zz\r\n\r\n<html></html>\r\n\r\n")
        counts["garbled"] = counts.get("garbled", 0) + 1
        if f == files - 1:
            cut = response("https://docs.example.org/library/cut.html", pydoc_html("shlex").encode())
            records.append(cut[: len(cut) // 2])
            counts["truncated"] = 1
        if f == files - 2:
            bad = response("https://docs.example.org/bad-length.html", b"<html><body>short</body></html>")
            records.append(re.sub(rb"Content-Length: (\d+)", lambda m: b"Content-Length: %d" % (int(m[1]) + 5000),
                                  bad, count=1))  # the WARC header's length, 5000 bytes past the end
            counts["bad_length"] = 1
        write_warc(str(out / f"crawl-{f:05d}.warc.gz"), records)
    manifest = {"args": args, "records": sum(v for k, v in counts.items()), "kinds": dict(sorted(counts.items())),
                "modules": len(names)}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m jaxtrain.data.sample_crawl", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--modules", type=int, default=0, help="stdlib modules' pages (0 = all that import here)")
    p.add_argument("--files", type=int, default=8, help="WARC files to spread the records over")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spam", type=float, default=0.75, help="spam pages per module page (a real crawl is mostly junk)")
    a = p.parse_args(argv)
    m = build(a.out_dir, a.modules, a.files, a.seed, a.spam)
    print(f"{m['records']} records ({m['modules']} modules' pages) in {a.out_dir}: {m['kinds']}")


if __name__ == "__main__":
    main()
