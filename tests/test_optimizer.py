"""Learning-rate schedules that continue: WSD extends without a jump; cosine refuses a silent one."""

import json

import numpy as np
import optax
import pytest

from jaxtrain import pipeline
from jaxtrain.config import OptimizerConfig
from jaxtrain.train import optimizer

from conftest import tiny_config


def test_cosine_is_optax_warmup_cosine_decay():
    cfg = OptimizerConfig(learning_rate=3e-3, warmup_steps=50, min_lr_ratio=0.1)
    reference = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 50, 300, 3e-4)
    p = optimizer.plan(cfg, 300)
    np.testing.assert_allclose([optimizer.lr_at(p, t) for t in range(0, 400, 7)],
                               [float(reference(t)) for t in range(0, 400, 7)], rtol=1e-5, atol=1e-9)


def test_wsd_warms_holds_and_decays_to_the_floor_on_the_last_step():
    p = optimizer.plan(OptimizerConfig(learning_rate=1.0, warmup_steps=10, schedule="wsd", min_lr_ratio=0.1), 100)
    lrs = [optimizer.lr_at(p, t) for t in range(100)]
    assert lrs[5] == pytest.approx(0.5) and lrs[10] == lrs[79] == 1.0  # the last 20% decay: from step 80
    assert lrs[99] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[80:], lrs[81:]))


def test_extending_wsd_in_the_stable_phase_moves_the_decay_and_after_it_holds_the_rate():
    cfg = OptimizerConfig(learning_rate=1.0, warmup_steps=10, schedule="wsd", min_lr_ratio=0.1)
    short, long = optimizer.plan(cfg, 100), optimizer.plan(cfg, 200)
    assert optimizer.continue_plan(short, long, 50) is None  # stable: the longer plan continues the curve
    hold = optimizer.continue_plan(short, long, 100)  # finished: the rate it ended at carries on
    extended = optimizer.plan(cfg, 200, hold)
    assert optimizer.lr_at(extended, 100) == optimizer.lr_at(short, 99) == pytest.approx(0.1)
    mid = optimizer.continue_plan(short, long, 90)  # mid-decay: no jump back up to the peak
    assert optimizer.lr_at(optimizer.plan(cfg, 200, mid), 90) == pytest.approx(optimizer.lr_at(short, 90))


def _lrs(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows if "lr" in r}


BASE = ["train.log_every=1", "checkpoint.every_steps=10", "eval.every_steps=1000", "optimizer.warmup_steps=2"]


def test_a_finished_wsd_run_extended_continues_at_the_same_rate(fresh_run):
    pipeline.train(tiny_config(*BASE, "optimizer.schedule=wsd", "train.steps=20"), fresh_run)
    pipeline.train(tiny_config(*BASE, "optimizer.schedule=wsd", "train.steps=40"), fresh_run)
    lrs = _lrs(fresh_run)
    assert lrs[21] == pytest.approx(lrs[20], rel=1e-9)  # step 21 (the first new one) at step 20's rate
    assert lrs[40] == pytest.approx(lrs[20]) and max(lrs[s] for s in range(21, 41)) == pytest.approx(lrs[20])


def test_extending_a_cosine_run_is_refused_or_keeps_its_explicit_horizon(fresh_run):
    pipeline.train(tiny_config(*BASE, "train.steps=20"), fresh_run)
    config_before = (fresh_run / "config.yaml").read_text()
    with pytest.raises(optimizer.ScheduleChange, match=r"optimizer\.decay_steps=20"):
        pipeline.train(tiny_config(*BASE, "train.steps=40"), fresh_run)
    assert (fresh_run / "config.yaml").read_text() == config_before
    pipeline.train(tiny_config(*BASE, "train.steps=40", "optimizer.decay_steps=20"), fresh_run)
    lrs = _lrs(fresh_run)
    floor = 0.003 * 0.1
    assert lrs[21] == pytest.approx(floor) and lrs[40] == pytest.approx(floor)


def test_a_run_extended_before_its_decay_began_continues_without_a_refusal():
    """Stopped in warm-up (the tiny preset warms up for 5 steps; a 4-step run never left it): a longer
    horizon changes nothing already run, so it is neither refused nor held."""
    cfg = tiny_config("optimizer.schedule=cosine").optimizer
    assert optimizer.continue_plan(optimizer.plan(cfg, 4), optimizer.plan(cfg, 8), 4) is None
    with pytest.raises(optimizer.ScheduleChange):  # once the decay has begun, the change is the user's to make
        optimizer.continue_plan(optimizer.plan(cfg, 20), optimizer.plan(cfg, 40), 10)
