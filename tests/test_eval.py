import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtrain import cli
from jaxtrain.data import loader, shards
from jaxtrain.data import tokenizer as tok
from jaxtrain.rundir import RunDir
from jaxtrain.train.trainer import load_params
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

    # Bits per byte use the recorded byte counts: the whole split is evaluated here, so it is exact. Both
    # sides count the text alone: the loss of every predicted token except the end-of-document, over the
    # text's UTF-8 bytes (recomputed here with the model itself, outside the eval step).
    counts = shards.token_counts(fresh_run)
    code = counts[shards.split_name("validation", "stdlib_code")]
    assert offline["eval/tokens"] == sum(counts[shards.split_name("validation", s)]["tokens"] for s in ("stdlib_code", "stdlib_docs"))
    trainer, params, _ = load_params(cfg, fresh_run, 2)
    model = nnx.merge(trainer.spec.graphdef, jax.device_get(params))
    eos = tok.load(RunDir(fresh_run).tokenizer).eos_id
    text_nats = 0.0
    for batch in loader.eval_batches(fresh_run, "stdlib_code", seq_len=64, batch_size=8, max_batches=100):
        logp = jax.nn.log_softmax(model(batch["inputs"], batch["positions"], batch["segment_ids"]), axis=-1)
        nll = -np.take_along_axis(np.asarray(logp), batch["targets"][..., None], axis=-1)[..., 0]
        text_nats += float(nll[(batch["loss_mask"] > 0) & (batch["targets"] != eos)].sum())
    assert offline["eval/stdlib_code/bpb"] == pytest.approx(text_nats / math.log(2) / code["bytes"], rel=1e-4)
    with_eos = offline["eval/stdlib_code/loss"] * code["tokens"] / math.log(2) / code["bytes"]
    assert offline["eval/stdlib_code/bpb"] < with_eos  # the end-of-document losses had no bytes to divide

    assert (fresh_run / "eval.png").stat().st_size > 5_000
    events = list((fresh_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 1_000
    assert "bits/byte" in capsys.readouterr().out


def test_the_run_summary_says_worse_when_the_model_loses_to_the_unigram_baseline():
    from jaxtrain.pipeline import comparison

    assert comparison(3.5, 4.25).endswith("(0.7500 better)")
    worse = comparison(4.9337, 4.25)
    assert "0.6837 WORSE" in worse and "better" not in worse
