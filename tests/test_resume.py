import json

import jax
import numpy as np

from jaxtrain import pipeline

from conftest import tiny_config

OVERRIDES = ["train.steps=8", "checkpoint.every_steps=4", "eval.every_steps=100", "train.log_every=2",
             "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]


def _params(result):
    return jax.tree.map(np.asarray, jax.device_get(result["state"].params))


def test_interrupted_run_matches_uninterrupted_bit_for_bit(fresh_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(fresh_run, other)
    cfg = tiny_config(*OVERRIDES)

    full = pipeline.train(cfg, fresh_run)
    assert full["step"] == 8

    first = pipeline.train(cfg, other, max_steps_this_run=4)  # "interrupted" after the step-4 save
    assert first["step"] == 4
    capsys.readouterr()
    resumed = pipeline.train(cfg, other)
    assert "resuming from checkpoint step 4" in capsys.readouterr().out
    assert resumed["step"] == 8

    for a, b in zip(jax.tree.leaves(_params(full)), jax.tree.leaves(_params(resumed)), strict=True):
        np.testing.assert_array_equal(a, b)
    # The logged losses after the resume point are identical too: same data order.
    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert {s: l for s, l in losses(other).items() if s > 4} == {s: l for s, l in losses(fresh_run).items() if s > 4}


def test_finished_run_says_so_and_does_not_retrain(fresh_run, capsys):
    cfg = tiny_config(*OVERRIDES[:1], "checkpoint.every_steps=8", "train.steps=3")
    pipeline.train(cfg, fresh_run)
    capsys.readouterr()
    again = pipeline.train(cfg, fresh_run)
    out = capsys.readouterr().out
    assert "resuming from checkpoint step 3" in out and "nothing to train" in out
    assert again["step"] == 3
