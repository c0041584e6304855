"""The curation report: where every input document went, per source, as JSON, Markdown and PNG."""

from __future__ import annotations

import collections
import json

import numpy as np
from etils import epath
from matplotlib.figure import Figure

REMOVED_SAMPLES = "removed_samples.jsonl"  # beside the ledger (written by curate): documents each rule removed
SAMPLES_PER_RULE = 20  # per source and rule: enough to judge a threshold by eye, small enough to read
BUCKETS = ("kept", "removed", "duplicate", "unreadable", "skipped", "capped")


def _new() -> dict:
    return {"input_docs": 0, "input_bytes": 0, "kept_docs": 0, "kept_bytes": 0, "eval_docs": 0,
            "removed": collections.Counter(), "removed_bytes": collections.Counter(),
            "duplicates": collections.Counter(), "duplicate_bytes": 0, "unreadable": collections.Counter(),
            "skipped": collections.Counter(), "capped_docs": 0, "pii_replaced": 0, "repaired_utf8": 0, "examples": {},
            "languages": collections.Counter(), "quality_scores": [], "decoded": collections.Counter()}


def build(ledger_files: list[epath.Path], sources: list[str], read_counts: dict[str, int] | None = None,
          classifier: dict | None = None) -> dict:
    """Aggregate the ledger (and the quality classifier's meta, when one was trained). Per source, `input_docs` counts ledger lines, `accounted` their buckets and
    `read` the ledger lines the readers counted from the raw input (independent of the ledger): all
    three must agree."""
    report = {s: _new() for s in sources}
    for path in ledger_files:
        with path.open() as f:
            for line in f:
                e = json.loads(line)
                r = report[e["source"]]
                r["input_docs"] += 1
                r["input_bytes"] += e.get("bytes", 0)
                r["repaired_utf8"] += bool(e.get("repaired_utf8"))
                if "language" in e:  # identified (web sources, or a languages filter): every document judged so far
                    r["languages"][e["language"]] += 1
                if "encoding" in e:  # text that was not UTF-8, decoded with the detected encoding
                    r["decoded"][e["encoding"]] += 1
                if "quality_score" in e:
                    r["quality_scores"].append(e["quality_score"])
                bucket, reason = e["bucket"], e.get("reason", "")
                if bucket == "kept":
                    r["kept_docs"] += 1
                    r["kept_bytes"] += e["kept_bytes"]
                    r["eval_docs"] += e.get("split") == "validation"
                    r["pii_replaced"] += e.get("pii", 0)
                elif bucket == "removed":
                    r["removed"][reason] += 1
                    r["removed_bytes"][reason] += e.get("bytes", 0)
                    r["examples"].setdefault(reason, e["id"])
                elif bucket == "duplicate":
                    r["duplicates"][reason.split(":", 1)[0]] += 1
                    r["duplicate_bytes"] += e.get("bytes", 0)
                    kind, representative = reason.split(":", 1)  # the representative's key: "0003|its id"
                    r["examples"].setdefault(kind + "_duplicate", f"{e['id']} of {representative.split('|', 1)[-1]}")
                elif bucket == "unreadable":
                    r["unreadable"][reason] += 1
                    r["examples"].setdefault(f"unreadable:{reason}", e["id"])
                elif bucket == "skipped":
                    r["skipped"][reason] += 1
                    r["examples"].setdefault(f"skipped:{reason}", e["id"])
                elif bucket == "capped":
                    r["capped_docs"] += 1
    for name, r in report.items():
        r["accounted"] = (r["kept_docs"] + sum(r["removed"].values()) + sum(r["duplicates"].values())
                          + sum(r["unreadable"].values()) + sum(r["skipped"].values()) + r["capped_docs"])
        r["read"] = (read_counts or {}).get(name, 0)
        r["languages"] = dict(r["languages"].most_common())
        scores = r.pop("quality_scores")
        if scores and classifier:
            counts, _ = np.histogram(np.asarray(scores), bins=10, range=(0.0, 1.0))
            r["quality_classifier"] = {"scored_docs": len(scores), "score_histogram": [int(c) for c in counts],
                                       "median_score": round(float(np.median(scores)), 4),
                                       "held_out_accuracy": classifier.get("accuracy"),
                                       "held_out_balanced_accuracy": classifier.get("balanced_accuracy"),
                                       "majority_rate": classifier.get("majority_rate"),
                                       "held_out_docs": classifier.get("held_out_docs"),
                                       "trained_on_digest": classifier.get("trained_on_digest")}
        for key in ("removed", "removed_bytes", "duplicates", "unreadable", "skipped", "decoded"):
            r[key] = dict(sorted(r[key].items()))
        lost = sum(r["removed_bytes"].values()) + r["duplicate_bytes"]
        r["lost_fraction"] = round(lost / max(lost + r["kept_bytes"], 1), 4)  # of the judged bytes (not the cap)
    return report


def lost_warning(name: str, r: dict, limit: float) -> str | None:
    """One line when curation removed more than `limit` of a source's judged bytes, naming the biggest causes."""
    if r.get("lost_fraction", 0.0) <= limit:
        return None
    causes = {**r["removed_bytes"], "duplicates": r["duplicate_bytes"]}
    top = sorted(causes.items(), key=lambda kv: -kv[1])[:3]
    total = sum(causes.values()) or 1
    named = ", ".join(f"{k} {v / total:.0%}" for k, v in top if v)
    return (f"source {name!r} lost {r['lost_fraction']:.0%} of its bytes to curation ({named} of what was lost); "
            f"look at what each rule removed in {REMOVED_SAMPLES} beside report.md, then loosen data.thresholds.<rule> "
            "or the source's filters if that is not what you want (data.warn_lost_fraction sets this warning's level).")


def write(report: dict, out_dir: epath.Path) -> None:
    out_dir = epath.Path(out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown(report))
    with (out_dir / "report.png").open("wb") as f:
        chart(report, f)


def markdown(report: dict) -> str:
    lines = ["# Curation report", "",
             "| source | input docs | input MB | kept docs | kept MB | held out | removed | duplicates | unreadable "
             "| skipped | capped | PII replaced | bytes lost |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report.items():
        lines.append(
            f"| {name} | {r['input_docs']} | {r['input_bytes'] / 1e6:.2f} | {r['kept_docs']} | {r['kept_bytes'] / 1e6:.2f} "
            f"| {r['eval_docs']} | {sum(r['removed'].values())} | {sum(r['duplicates'].values())} "
            f"| {sum(r['unreadable'].values())} | {sum(r['skipped'].values())} | {r['capped_docs']} "
            f"| {r['pii_replaced']} | {r['lost_fraction']:.0%} |")
    for name, r in report.items():
        lines += ["", f"## {name}", "", "| outcome | docs | MB | example |", "|---|---:|---:|---|"]
        for rule, n in r["removed"].items():
            lines.append(f"| removed: {rule} | {n} | {r['removed_bytes'][rule] / 1e6:.3f} | {r['examples'].get(rule, '')} |")
        for kind, n in r["duplicates"].items():
            lines.append(f"| duplicate ({kind}) | {n} | | {r['examples'].get(kind + '_duplicate', '')} |")
        for reason, n in r["unreadable"].items():
            lines.append(f"| unreadable: {reason} | {n} | | {r['examples'].get('unreadable:' + reason, '')} |")
        for reason, n in r["skipped"].items():
            lines.append(f"| skipped: {reason} | {n} | | {r['examples'].get('skipped:' + reason, '')} |")
        if r["languages"]:
            found = ", ".join(f"{lang} {n}" for lang, n in r["languages"].items())
            lines.append(f"| languages found (documents) | {sum(r['languages'].values())} | | {found} |")
        if r["decoded"]:
            found = ", ".join(f"{enc} {n}" for enc, n in r["decoded"].items())
            lines.append(f"| not UTF-8, decoded as detected | {sum(r['decoded'].values())} | | {found} |")
        if qc := r.get("quality_classifier"):
            bins = " ".join(str(c) for c in qc["score_histogram"])
            lines.append(f"| quality classifier: documents scored | {qc['scored_docs']} | | median score "
                         f"{qc['median_score']}; per 0.1 bin: {bins}; held-out balanced accuracy "
                         f"{qc['held_out_balanced_accuracy']} (accuracy {qc['held_out_accuracy']}, majority class "
                         f"{qc['majority_rate']}) on {qc['held_out_docs']} documents |")
        lines.append(f"| accounted / input | {r['accounted']} / {r['input_docs']} | | |")
        lines.append(f"| counted when read | {r['read']} | | |")
    lines += ["", f"Up to {SAMPLES_PER_RULE} documents each rule removed, per source (the start of each): "
              f"`{REMOVED_SAMPLES}` in this directory (a rule's name carries the check that fired after a colon: "
              "`jq 'select(.rule | startswith(\"gopher_repetition\"))' " + REMOVED_SAMPLES + "`)."]
    return "\n".join(lines) + "\n"


def chart(report: dict, file) -> None:
    """Documents and bytes removed per rule (duplicates and unreadable included), one bar group per source."""
    def outcome_counts(r: dict) -> dict:
        return {**r["removed"], **{f"duplicate:{k}": n for k, n in r["duplicates"].items()},
                **{f"unreadable:{k}": n for k, n in r["unreadable"].items()},
                **{f"skipped:{k}": n for k, n in r["skipped"].items()}}

    outcomes = sorted({k for r in report.values() for k in outcome_counts(r)})
    fig = Figure(figsize=(12, max(3, 0.35 * len(outcomes) + 1.5)))  # no pyplot: no global backend state
    axes = fig.subplots(1, 2, sharey=True)
    height = 0.8 / max(len(report), 1)
    for i, (name, r) in enumerate(report.items()):
        counts = outcome_counts(r)
        docs = [counts.get(o, 0) for o in outcomes]
        mb = [r["removed_bytes"].get(o, 0) / 1e6 for o in outcomes]
        ys = [j + i * height for j in range(len(outcomes))]
        axes[0].barh(ys, docs, height=height, label=name)
        axes[1].barh(ys, mb, height=height, label=name)
    axes[0].set_yticks([j + 0.4 - height / 2 for j in range(len(outcomes))], outcomes, fontsize=7)
    axes[0].set_xlabel("documents removed")
    axes[1].set_xlabel("MB removed by quality rules")
    axes[0].legend(fontsize=7)
    fig.suptitle("Curation: where the removed documents went")
    fig.tight_layout()
    fig.savefig(file, format="png", dpi=90)
