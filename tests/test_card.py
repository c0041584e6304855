"""The data card (#22): its numbers recomputed from the ledger and the shards, decontamination against a user's
benchmark file, a changed input named, and the exported model card read by huggingface_hub."""

import collections
import json
import shutil

import pytest

from jaxtrain import cli, pipeline
from jaxtrain.config import load_run_config
from jaxtrain.data import clean, shards
from jaxtrain.errors import ConfigError
from jaxtrain.export import card
from jaxtrain.export.handoff import export_run
from jaxtrain.rundir import RunDir

from conftest import tiny_config

huggingface_hub = pytest.importorskip("huggingface_hub")


def _ledger_counts(run: RunDir, source: str) -> dict:
    """Per bucket and reason, straight from the ledger lines (not through the report)."""
    counts = {"read": 0, "removed": collections.Counter(), "duplicates": collections.Counter(),
              "kept": 0, "held_out": 0, "unreadable": 0, "skipped": 0, "capped": 0, "pii": 0}
    for path in clean.ledger_files(run.clean):
        for entry in map(json.loads, path.read_text().splitlines()):
            if entry["source"] != source:
                continue
            counts["read"] += 1
            bucket = entry["bucket"]
            if bucket == "removed":
                counts["removed"][entry["reason"]] += 1
            elif bucket == "duplicate":
                counts["duplicates"][entry["reason"].split(":")[0]] += 1
            else:
                counts[bucket] += 1
            if bucket == "kept":
                counts["held_out"] += entry["split"] == "validation"
                counts["pii"] += entry["pii"]
    return counts


def test_the_card_of_a_trained_run_equals_the_ledger_the_shards_and_the_steps(fresh_run, tmp_path, capsys):
    cfg = tiny_config("train.steps=4", "checkpoint.every_steps=2", "eval.every_steps=4",
                      "data.sources=[{name: stdlib_code, content: code, license: PSF-2.0}, "
                      "{name: stdlib_docs, content: docs, origin: 'CPython docs'}]")
    pipeline.train(cfg, fresh_run)
    assert cli.main(["card", "--run-dir", str(fresh_run)]) in (0, None)
    out = capsys.readouterr().out
    data = json.loads((fresh_run / card.CARD_JSON).read_text())
    assert "[card]" in out and (fresh_run / card.CARD_MD).exists()
    run = RunDir(fresh_run)
    counts = shards.token_counts(run)
    for s in data["sources"]:
        ledger, d = _ledger_counts(run, s["name"]), s["documents"]
        assert d["read"] == ledger["read"] and d["removed_by_rule"] == dict(ledger["removed"])
        assert d["duplicates"] == dict(ledger["duplicates"]) and d["pii_replaced"] == ledger["pii"]
        assert (d["kept"], d["held_out"], d["unreadable"], d["skipped"], d["over_max_bytes"]) == \
            (ledger["kept"], ledger["held_out"], ledger["unreadable"], ledger["skipped"], ledger["capped"])
        src = shards.data_source(run, "train", s["name"])
        assert s["tokens"]["train"] == sum(len(src[i]["tokens"]) - 1 for i in range(len(src)))
        assert s["tokens"]["train"] == counts[shards.split_name("train", s["name"])]["tokens"]
    by_name = {s["name"]: s for s in data["sources"]}
    assert by_name["stdlib_code"]["license"] == "PSF-2.0" and by_name["stdlib_docs"]["origin"] == "CPython docs"
    # Every token of the 4 steps' batches is counted once, by source (packing leaves no padding here).
    trained = sum(s["tokens_trained"] for s in data["sources"])
    assert 0.9 * 4 * cfg.tokens_per_step <= trained <= 4 * cfg.tokens_per_step
    assert [c["step"] for c in data["chain"]["checkpoints"]] == [2, 4]
    assert data["chain"]["inputs_changed_since_curation"] == []
    # A resumed run counts on from its checkpoint: 2 steps, then 2 more, equals 4 at once.
    again = tmp_path / "again"
    for part in ("data", "tokenizer"):
        shutil.copytree(fresh_run / part, again / part)
    pipeline.train(tiny_config("train.steps=4", "checkpoint.every_steps=2", "eval.every_steps=4"), again,
                   max_steps_this_run=2)
    pipeline.train(tiny_config("train.steps=4", "checkpoint.every_steps=2", "eval.every_steps=4"), again)
    resumed = card.data_card(load_run_config(again), again)
    assert {s["name"]: s["tokens_trained"] for s in resumed["sources"]} == \
        {s["name"]: s["tokens_trained"] for s in data["sources"]}

    # The export carries the cards, and the Hub's own parser reads its metadata.
    hf_out = export_run(load_run_config(fresh_run), fresh_run, tmp_path / "hf")
    model_card = huggingface_hub.ModelCard.load(hf_out / "README.md", ignore_metadata_errors=False)
    meta = model_card.data.to_dict()
    assert meta["license"] == "other" and meta["license_name"] == "psf-2.0"  # not one of the Hub's identifiers
    assert meta["library_name"] == "transformers" and "jaxtrain" in meta["tags"]
    assert json.loads((hf_out / card.CARD_JSON).read_text())["sources"] == data["sources"]
    assert "eval/loss" in model_card.text and "## Data card" in model_card.text


def _overrides(docs):
    return ["data.sources=[{name: notes, type: files, filters: [], content: prose, license: cc-by-4.0, "
            f"path: '{docs}/*.txt'}}]", "data.near_dedup=false", "data.eval_fraction=0.2",
            "tokenizer.vocab_size=300", "model.vocab_size=300"]


def _docs_run(tmp_path, benchmark=None):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"d{i:02d}.txt").write_text(
            f"Document number {i} talks about topic {i % 7} at some length.\n"
            + f"The second line of document {i} says that the river number {i % 5} is wide and deep.\n" * 4)
    (docs / "leak.txt").write_text("A leaked benchmark item follows here in the corpus.\n"
                                   "Which planet in the solar system has the longest day of all the planets? "
                                   "Venus, whose day lasts longer than its year.\n" * 2)
    overrides = _overrides(docs)
    if benchmark:
        overrides.append(f"data.decontaminate=['{benchmark}']")
    return docs, tiny_config(*overrides)


def test_a_benchmark_file_that_overlaps_the_corpus_removes_the_document_and_the_card_says_so(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": "Which planet in the solar system has the longest day of all the "
                                 "planets?", "answer": "Venus"}) + "\n")
    docs, cfg = _docs_run(tmp_path, bench)
    run = RunDir(tmp_path / "run")
    pipeline.prepare(cfg, run)
    removed = [json.loads(line) for path in clean.ledger_files(run.clean) for line in path.read_text().splitlines()
               if json.loads(line).get("reason") == "decontaminated"]
    assert [e["id"].rsplit("/", 1)[-1] for e in removed] == ["leak.txt"]
    data = card.data_card(cfg, run)
    dec = data["decontamination"]
    assert dec["removed_by_curation"] == {"notes": 1} and dec["ngram"] == 13
    [user_set] = [e for e in dec["sets"] if e["kind"] == "data.decontaminate"]
    assert user_set["set"] == str(bench) and user_set["training_documents_overlapping"] == {"notes": 0}
    assert data["chain"]["inputs_changed_since_curation"] == []

    # The provenance chain: a source file edited after curation is named when the card is written.
    (docs / "d03.txt").write_text("edited after curation\n")
    data = card.data_card(cfg, run)
    [changed] = data["chain"]["inputs_changed_since_curation"]
    assert changed.startswith(f"{docs / 'd03.txt'}: changed since curation")
    assert any("d03.txt" in u for u in data["unknown"])
    assert card.front_matter(data)["license"] == "cc-by-4.0"


def test_multiple_choice_benchmarks_and_empty_task_files(tmp_path, capsys):
    """A new user's trial: a document quoting a multiple-choice item's context and correct ending is removed
    (the fields were joined in order, wrong ending first); an empty built-in task file does not stop the card;
    a benchmark with no 13-word span is warned about."""
    bench = tmp_path / "mc.jsonl"
    bench.write_text(json.dumps({"ctx": "The violet harbor keeper counted eleven lanterns then",
                                 "endings": ["flew to the moon on a paper kite made of old maps",
                                             "walked home along the quiet pier before the storm came in"],
                                 "label": 1}) + "\n")
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"q": "Two plus two?", "a": "Four"}) + "\n")
    docs, cfg = _docs_run(tmp_path, bench)
    (docs / "quote.txt").write_text("Story time. The violet harbor keeper counted eleven lanterns then walked home "
                                    "along the quiet pier before the storm came in. The end of the story is near.\n" * 3)
    cfg = tiny_config(*[o for o in _overrides(docs)], f"data.decontaminate=['{bench}', '{short}']")
    run = RunDir(tmp_path / "run")
    pipeline.prepare(cfg, run)
    assert "short.jsonl has no span of 13 words" in capsys.readouterr().out
    removed = [json.loads(line)["id"] for path in clean.ledger_files(run.clean) for line in path.read_text().splitlines()
               if json.loads(line).get("reason") == "decontaminated"]
    assert sorted(r.rsplit("/", 1)[-1] for r in removed) == ["quote.txt"]
    (run.tasks / "empty_task.jsonl").write_text("")
    data = card.data_card(cfg, run)
    assert any(e["set"].endswith("empty_task.jsonl") and e["ngrams"] == 0 for e in data["decontamination"]["sets"])


def test_a_benchmark_file_without_text_is_refused_in_one_line(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"id": 3, "label": 1}) + "\n")
    _, cfg = _docs_run(tmp_path, bench)
    with pytest.raises(ConfigError, match=r"data.decontaminate: .*bench.jsonl holds no text"):
        pipeline.prepare(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "data" / "clean").exists()
