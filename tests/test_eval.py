import json
import math

import pytest

from jaxtrain import cli
from jaxtrain.data import shards
from jaxtrain import pipeline

from conftest import tiny_config


def test_offline_eval_reproduces_in_loop_numbers_and_writes_reports(fresh_run, capsys):
    cfg = tiny_config("train.steps=4", "eval.every_steps=2", "checkpoint.every_steps=2", "eval.max_batches=100")
    pipeline.train(cfg, fresh_run)
    in_loop = {r["step"]: r for r in map(json.loads, (fresh_run / "evals.jsonl").read_text().splitlines())}
    assert sorted(in_loop) == [2, 4]
    assert cli.main(["eval", str(fresh_run), "--step", "2"]) == 0
    rows = [json.loads(line) for line in (fresh_run / "evals.jsonl").read_text().splitlines()]
    offline = [r for r in rows if r["kind"] == "offline"][-1]
    assert offline["step"] == 2
    for key in ("eval/loss", "eval/bpb", "eval/stdlib_code/loss", "eval/stdlib_docs/bpb"):
        assert offline[key] == pytest.approx(in_loop[2][key], rel=1e-6), key

    # Bits per byte use the recorded byte counts: the whole split is evaluated here, so it is exact.
    counts = shards.token_counts(fresh_run)
    code = counts[shards.split_name("validation", "stdlib_code")]
    assert offline["eval/tokens"] == sum(counts[shards.split_name("validation", s)]["tokens"] for s in ("stdlib_code", "stdlib_docs"))
    expected_bpb = offline["eval/stdlib_code/loss"] * code["tokens"] / math.log(2) / code["bytes"]
    assert offline["eval/stdlib_code/bpb"] == pytest.approx(expected_bpb, rel=1e-6)

    assert (fresh_run / "eval.png").stat().st_size > 5_000
    events = list((fresh_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 1_000
    assert "bits/byte" in capsys.readouterr().out
