"""The data card: what a model was trained on, in writing, from the run's own records.

`jaxtrain card --run-dir RUN` writes `DATA_CARD.md` and `data_card.json` into the run (and every export
carries them). Every number is read from a record the pipeline keeps, never estimated:

  sources            the config (license, origin, location) and the curation report, which is built from
                     the ledger (one line per input unit): documents read, unreadable, skipped, removed by
                     each rule, duplicates, PII replaced, kept and held out; languages where identified
  tokens             the token shards' counts per split, and the target tokens training drew from each
                     source (`tokens_by_source` in the latest checkpoint's meta, counted by the loop)
  decontamination    the evaluation sets (`data.decontaminate` and the built-in tasks), the n-gram size, the
                     documents removed, and the overlap that remains in the training split, recomputed now
  provenance chain   input files (path, size, sha256; re-read now: a file changed since curation is named)
                     -> curated corpus digest -> tokenizer fingerprint -> token shards digest -> each
                     checkpoint (step, tokens, tokenizer) -> the export (its provenance.json)
  unknown            what the run cannot vouch for (undeclared licenses, changed inputs, ...), said plainly
"""

from __future__ import annotations

import json
import re
from typing import Any

from jaxtrain import __version__
from jaxtrain.config import RunConfig
from jaxtrain.data import clean, curate, filters, provenance, shards, stages
from jaxtrain.data import tokenizer as tok
from jaxtrain.rundir import RunDir
from jaxtrain.train.checkpoint import Checkpointer

CARD_JSON, CARD_MD = "data_card.json", "DATA_CARD.md"
# Licenses of the embedded sources, which jaxtrain itself reads from this Python installation.
EMBEDDED_LICENSES = {
    "stdlib_code": ("PSF-2.0", "the CPython standard library's source"),
    "stdlib_docs": ("PSF-2.0", "the CPython documentation (module docstrings and bundled pages)"),
    "package_metadata": ("", "installed packages' metadata; each package's own license"),
}


def _license_and_origin(source) -> tuple[str, str]:
    if source.type == "embedded":
        license_, origin = EMBEDDED_LICENSES.get(source.name, ("", "embedded"))
        return source.license or license_, source.origin or origin
    location = source.path or source.dataset
    return source.license, source.origin or location


def _checkpoints(run: RunDir, cfg: RunConfig) -> list[dict]:
    if not run.checkpoints.exists():
        return []
    reader = Checkpointer(run, keep=cfg.checkpoint.keep, async_save=False, read_only=True)
    try:
        out = []
        for step in reader.all_steps():
            meta = reader.restore_meta(step)
            out.append({"step": step, "tokens_seen": meta.get("tokens_seen"),
                        "tokenizer_fingerprint": meta.get("tokenizer_fingerprint"),
                        "tokens_by_source": meta.get("tokens_by_source"),
                        **({"imported_from": meta["imported_from"]} if meta.get("imported_from") else {})})
        return out
    finally:
        reader.close()


def _overlap(run: RunDir, cfg: RunConfig, report: dict) -> dict:
    """Each evaluation set (the user's and the built-in tasks): the documents curation removed for it and the
    training documents that still share an n-gram with it, per source."""
    n = cfg.data.decontaminate_ngram
    sets = {pattern: "data.decontaminate" for pattern in cfg.data.decontaminate}
    if run.tasks.exists():
        sets.update({str(p): "built-in task (from held-out text)" for p in sorted(run.tasks.glob("*.jsonl"))})
    train_grams = {s.name: _doc_ngrams(run, s.name, n) for s in cfg.data.sources if s.train}
    out = []
    for pattern, kind in sets.items():
        grams = curate.decontamination_ngrams((pattern,), n, strict=kind == "data.decontaminate")
        remaining = {name: sum(1 for doc in docs if not doc.isdisjoint(grams)) for name, docs in train_grams.items()}
        out.append({"set": pattern, "kind": kind, "ngrams": len(grams), "training_documents_overlapping": remaining})
    removed = {name: r["removed"].get("decontaminated", 0) for name, r in report.items()}
    return {"ngram": n, "removed_by_curation": removed, "sets": out}


def _doc_ngrams(run: RunDir, source: str, n: int) -> list[set[str]]:
    return [filters.ngrams(json.loads(line)["text"], n)
            for path in clean.split_files(run.clean, source, "train") for line in path.read_text().splitlines()
            if line.strip()]


def data_card(cfg: RunConfig, run_dir: str | RunDir) -> dict:
    run = RunDir(run_dir)
    base = json.loads(run.base_model.read_text()) if run.base_model.exists() else None
    unknown: list[str] = []
    if base:
        unknown.append(f"the base model's own training data ({base['source']}): not described by this card")
        if "not declared" in base["license"]:
            unknown.append("the base model's license: its model card declares none")
    prepared = run.curation_report.exists() and run.token_counts.exists()
    card: dict[str, Any] = {"jaxtrain": __version__, "run": str(run), "name": cfg.name, "base_model": base}
    checkpoints = _checkpoints(run, cfg)
    trained = next((c["tokens_by_source"] for c in reversed(checkpoints) if c.get("tokens_by_source")), None)
    if not prepared:
        unknown.append("no data prepared in this run: nothing trained on yet")
        card.update(sources=[], decontamination=None, chain={"checkpoints": checkpoints}, unknown=unknown)
        return card
    report, counts = json.loads(run.curation_report.read_text()), shards.token_counts(run)
    manifest = json.loads(run.curation_inputs.read_text()) if run.curation_inputs.exists() else None
    if manifest is None:
        unknown.append(f"{run.curation_inputs} is missing (curated by an older jaxtrain): the input files' digests "
                       "were never recorded")
    changed = provenance.changed_inputs(manifest) if manifest else []
    unknown += [f"input {line}: this card describes the data as curated, not the file as it is now" for line in changed]
    total_trained = sum(trained.values()) if trained else 0
    sources = []
    for s in cfg.data.sources:
        r = report[s.name]
        license_, origin = _license_and_origin(s)
        if not license_:
            unknown.append(f"source {s.name}: license not declared (set data.sources[*].license)")
        tokens = {split: counts[shards.split_name(split, s.name)]["tokens"] for split in ("train", "validation")}
        sources.append({
            "name": s.name, "type": s.type, "content": s.content, "license": license_ or "not declared",
            "origin": origin, "location": s.path or s.dataset or f"embedded:{s.name}", "trained_on": s.train,
            "inputs": (manifest or {}).get("sources", {}).get(s.name),
            "documents": {"read": r["input_docs"], "unreadable": sum(r["unreadable"].values()),
                          "skipped": sum(r["skipped"].values()), "removed_by_rule": r["removed"],
                          "duplicates": r["duplicates"], "pii_replaced": r["pii_replaced"],
                          "over_max_bytes": r["capped_docs"], "kept": r["kept_docs"], "held_out": r["eval_docs"]},
            "bytes": {"read": r["input_bytes"], "kept": r["kept_bytes"]},
            "cleaned_sha256": stages.file_digest(*clean.split_files(run.clean, s.name, "train"),
                                                 *clean.split_files(run.clean, s.name, "validation"), length=64),
            "languages": r.get("languages") or None,  # identified in what was read
            "languages_kept": list(s.languages),  # what the source keeps (data.sources[*].languages)
            "tokens": tokens,
            "tokens_trained": trained.get(s.name, 0) if trained else 0,
            "trained_share": round(trained.get(s.name, 0) / total_trained, 4) if total_trained else None,
        })
        if s.type == "tfds":
            unknown.append(f"source {s.name}: a TFDS dataset, recorded by name and version only")
    if not checkpoints:
        unknown.append("no checkpoint yet: nothing trained")

    card["sources"] = sources
    card["decontamination"] = _overlap(run, cfg, report)
    card["chain"] = {
        "inputs_sha256": stages.file_digest(run.curation_inputs, length=64) if manifest else None,
        "inputs_changed_since_curation": changed,
        "curated_corpus_digest": stages.marker(run, "curation")["digest"],
        "tokenizer_fingerprint": tok.fingerprint(run.tokenizer),
        "token_shards_digest": stages.marker(run, "shards")["digest"],
        "checkpoints": checkpoints,
    }
    card["unknown"] = unknown
    return card


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
    return "n/a" if value is None else str(value)


def render(card: dict) -> str:
    lines = [f"# Data card: {card['name']}", "",
             f"Written by jaxtrain {card['jaxtrain']} from the run's own records (ledger, shards, checkpoints).", ""]
    if card["base_model"]:
        b = card["base_model"]
        lines += [f"Continued pretraining of `{b['source']}` (weights sha256 `{b['weights_sha256'][:16]}`, license: "
                  f"{b['license']}). What it learned before comes from its own corpus, which this card does not "
                  "describe; the data below is what jaxtrain added on top.", ""]
    if card["sources"]:
        lines += ["## Sources", "",
                  "| source | license | origin | trained on | read | unreadable | skipped | removed by rule | "
                  "duplicates | PII replaced | kept (held out) | languages | train tokens | tokens trained (share) |",
                  "|---|---|---|---|---:|---:|---:|---|---|---:|---:|---|---:|---:|"]
        for s in card["sources"]:
            d = s["documents"]
            share = "n/a" if s["trained_share"] is None else f"{s['trained_share']:.1%}"
            lines.append(f"| {s['name']} | {s['license']} | {s['origin']} | {'yes' if s['trained_on'] else 'no'} | "
                         f"{d['read']:,} | {d['unreadable']:,} | {d['skipped']:,} | {_cell(d['removed_by_rule'])} | "
                         f"{_cell(d['duplicates'])} | {d['pii_replaced']:,} | {d['kept']:,} ({d['held_out']:,}) | "
                         f"{_cell(s['languages'])} | {s['tokens']['train']:,} | {s['tokens_trained']:,} ({share}) |")
        dec = card["decontamination"]
        lines += ["", "## Decontamination", "",
                  f"Word {dec['ngram']}-grams. Documents removed by curation: {_cell(dec['removed_by_curation'])}.", "",
                  "| evaluation set | kind | n-grams | training documents still sharing one |", "|---|---|---:|---|"]
        lines += [f"| {e['set']} | {e['kind']} | {e['ngrams']:,} | {_cell(e['training_documents_overlapping'])} |"
                  for e in dec["sets"]] or ["| none | | | |"]
    chain = card["chain"]
    lines += ["", "## Provenance chain", ""]
    if "curated_corpus_digest" in chain:
        lines += [f"- input files: sha256 of their manifest `{_cell(chain['inputs_sha256'])}`"
                  f"{' (changed since: ' + '; '.join(chain['inputs_changed_since_curation']) + ')' if chain['inputs_changed_since_curation'] else ', all unchanged'}",
                  f"- curated corpus: `{chain['curated_corpus_digest']}`",
                  f"- tokenizer: fingerprint `{chain['tokenizer_fingerprint']}`",
                  f"- token shards: `{chain['token_shards_digest']}`"]
    lines += [f"- checkpoint {c['step']}: {_cell(c['tokens_seen'])} tokens, tokenizer `{c['tokenizer_fingerprint']}`"
              + (f", imported from {c['imported_from']}" if c.get("imported_from") else "") for c in chain["checkpoints"]]
    lines += ["", "## What this card cannot vouch for", ""]
    lines += [f"- {u}" for u in card["unknown"]] or ["- nothing: every source declares a license and every input "
                                                     "file still matches its recorded digest"]
    return "\n".join(lines) + "\n"


# Licenses the Hugging Face Hub takes as `license:` (its documented identifiers, lower case); any other
# declared license goes out as `license: other` with `license_name`, which the Hub asks for in that case.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0", "cc-by-nd-4.0", "gpl-3.0", "lgpl-3.0", "agpl-3.0", "mpl-2.0", "odc-by", "odbl", "pddl",
    "openrail", "llama2", "llama3", "llama3.1", "llama3.2", "gemma", "unknown"})


def front_matter(card: dict) -> dict:
    """The model card's YAML metadata (huggingface_hub.ModelCardData's fields): license, base_model, language,
    library_name, pipeline_tag, tags."""
    declared = {s["license"] for s in card["sources"] if s["trained_on"]}
    if card["base_model"]:
        declared.add(card["base_model"]["license"])
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation",
                            "tags": ["jaxtrain", "base-model", "pretraining"]}
    one = next(iter(declared)).lower() if len(declared) == 1 else None
    if one in HUB_LICENSES:
        meta["license"] = one
    else:  # the Hub asks for license_name in its id form (lower case, digits, . and -) with `other`
        meta["license"] = "other"
        if any("not declared" in d for d in declared) or not declared:
            meta["license_name"] = "undeclared"
        elif one:
            meta["license_name"] = re.sub(r"-+", "-", re.sub(r"[^a-z0-9.-]", "-", one)).strip("-") or "undeclared"
        else:
            meta["license_name"] = "multiple-licenses"  # each is in the data card's sources table
    if card["base_model"] and card["base_model"].get("repo_id"):  # the Hub wants a repository id, not a local path
        meta["base_model"] = card["base_model"]["repo_id"]
    languages = sorted({lang for s in card["sources"] if s["trained_on"] for lang in s["languages_kept"]})
    if languages:
        meta["language"] = languages
    return meta


def write(cfg: RunConfig, run_dir: str | RunDir, out_dir=None) -> dict:
    """DATA_CARD.md and data_card.json into out_dir (default: the run directory)."""
    run = RunDir(run_dir)
    card = data_card(cfg, run)
    out = run.root if out_dir is None else out_dir
    (out / CARD_JSON).write_text(json.dumps(card, indent=1) + "\n")
    (out / CARD_MD).write_text(render(card))
    return card
