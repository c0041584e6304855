"""`jaxtrain ablate` (#20), tiny: curation variants of one run trained with the same tokenizer and budget,
scored on the base run's held-out target (never trained on), resumable."""

import json
import math

import pytest
import yaml

from jaxtrain import ablate, pipeline, runconfig
from jaxtrain.config import CONFIG_DIR, load_config
from jaxtrain.data import loader, sample_crawl
from jaxtrain.rundir import RunDir


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablate")
    sample_crawl.build(str(tmp / "crawl"), modules=8, files=1)
    cfg = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    cfg["data"]["sources"] = [
        {"name": "web", "type": "warc", "path": str(tmp / "crawl" / "*.warc.gz"), "languages": ["en"],
         "filters": ["c4", "gopher_quality"]},
        {"name": "stdlib_docs", "type": "embedded", "content": "docs", "max_bytes": 40000},
    ]
    cfg["data"]["quality_classifier"] = {"reference": ["stdlib_docs"], "keep_fraction": 0.5}
    (tmp / "base.yaml").write_text(yaml.safe_dump(cfg))
    return tmp, runconfig.resolve(str(tmp / "base.yaml"), [], str(tmp / "run"), data=True)


def test_the_raw_variant_drops_every_rule_and_the_target_is_never_trained_on(base):
    _, resolved = base
    d = resolved.cfg.data
    raw = ablate.variant_data(d, "raw", "stdlib_docs", "/held/out.jsonl", seed=1)
    web, docs = raw.sources
    assert web.filters == () and web.languages == () and not raw.exact_dedup and not raw.near_dedup
    assert raw.min_chars == 1 and not raw.quality_classifier.reference and docs.train is False
    assert raw.decontaminate[-1] == "/held/out.jsonl" and raw.shuffle_seed == 1
    cls = ablate.variant_data(d, "classifier", "stdlib_docs", "/held/out.jsonl", seed=0)
    assert cls.sources[0] == d.sources[0] and cls.quality_classifier == d.quality_classifier
    assert not ablate.variant_data(d, "heuristics", "stdlib_docs", "/h", seed=0).quality_classifier.reference


def test_a_variant_trains_on_the_crawl_and_is_scored_on_the_base_runs_held_out_target(base):
    tmp, resolved = base
    out = tmp / "ablations"
    results = ablate.run_ablation(resolved, "stdlib_docs", out, ["classifier"], [0], steps=3)
    assert [(r["variant"], r["seed"]) for r in results] == [("classifier", 0)]
    (r,) = results
    assert math.isfinite(r["target_bpb"]) and r["target_bpb"] > 0 and r["budget_tokens"] == 3 * 8 * 64
    run = RunDir(out / "classifier-s0")
    cfg = load_config(str(run.config))
    _, weights = loader.training_batches(cfg.data, run, batch_size=cfg.train.batch_size)
    assert weights == [1.0, 0.0]  # the target is never trained on
    assert run.tokenizer.read_bytes() == resolved.run.tokenizer.read_bytes()  # one tokenizer for all variants
    assert (run.clean / "quality_classifier.json").exists()
    assert 0 < r["kept_docs"] < json.loads(resolved.run.curation_report.read_text())["web"]["input_docs"]
    table = (out / "ablation.md").read_text()
    assert "| classifier | 1 |" in table and "n/a (one seed)" in table and (out / "ablation.png").stat().st_size > 0


def test_a_finished_ablation_is_read_back_not_retrained(base, monkeypatch):
    tmp, resolved = base
    out = tmp / "ablations"
    before = ablate.read_results(out / ablate.RESULTS)
    if not before:
        pytest.skip("needs the previous test's runs")
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: pytest.fail("a finished variant was trained again"))
    assert ablate.run_ablation(resolved, "stdlib_docs", out, ["classifier"], [0], steps=3) == before
    with pytest.raises(Exception, match=r"--target: 'nope' is not a source"):
        ablate.run_ablation(resolved, "nope", out, ["raw"], [0], steps=3)
    # Another target or budget in the same --out is refused, not answered with the earlier results.
    with pytest.raises(Exception, match=r"--out .*: holds an ablation on target 'stdlib_docs' with a budget of 1536 "
                                        r"tokens; this one is on 'stdlib_docs' with 2560 \(5 steps\)"):
        ablate.run_ablation(resolved, "stdlib_docs", out, ["raw"], [0], steps=5)
    with pytest.raises(Exception, match=r"--steps: must be positive, got 0"):
        ablate.run_ablation(resolved, "stdlib_docs", out, ["raw"], [0], steps=0)
