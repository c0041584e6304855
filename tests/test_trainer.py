"""jaxtrain.train.trainer and the loop that builds it: one Trainer per training invocation (also on a resume
that continues an extended schedule), parameters-only sessions for eval, sample and export, and a loop
that neither stalls on the guard's streak flag nor carries the fault-injection field in production."""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import tiny_config

from jaxtrain import pipeline
from jaxtrain.config import load_run_config
from jaxtrain.export.handoff import export_run
from jaxtrain.train import loop, optimizer
from jaxtrain.train import trainer as trainer_lib


@pytest.fixture
def count_builds(monkeypatch):
    builds = []
    real = trainer_lib.build_trainer

    def counting(*args, **kwargs):
        builds.append(kwargs.get("lr_hold"))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "build_trainer", counting)
    return builds


def test_resume_builds_one_trainer_even_when_the_schedule_is_extended(fresh_run, count_builds, capsys):
    wsd = ("optimizer.schedule=wsd", "optimizer.warmup_steps=1", "optimizer.decay_fraction=0.5",
           "checkpoint.every_steps=4", "eval.every_steps=1000", "train.log_every=1")
    pipeline.train(tiny_config("train.steps=4", *wsd), fresh_run)
    assert count_builds == [None]
    # Extended after its decay began: the learning rate must hold where it was, so the Trainer's plan comes
    # from the checkpoint; it is read before the Trainer is built, which happens once.
    result = pipeline.train(tiny_config("train.steps=6", *wsd), fresh_run)
    assert result["step"] == 6 and len(count_builds) == 2 and count_builds[1] is not None
    hold_step, hold_lr = count_builds[1]
    assert hold_step == 4 and hold_lr > 0 and result["trainer"].lr_plan.hold_step == 4
    assert "holds at" in capsys.readouterr().out
    # A plain resume (nothing changed) builds one Trainer with no hold.
    pipeline.train(tiny_config("train.steps=6", *wsd), fresh_run)
    assert count_builds[2:] == [None]


def test_eval_sample_and_export_never_build_an_optimizer(fresh_run, tmp_path, monkeypatch):
    cfg = tiny_config("train.steps=2", "checkpoint.every_steps=2", "eval.every_steps=2")
    result = pipeline.train(cfg, fresh_run)
    full = jax.device_get(result["state"].params)

    def refuse(*args, **kwargs):
        raise AssertionError("an optimizer was built to read parameters")

    with pytest.raises(FileNotFoundError, match="no checkpoints"):  # a mistyped run directory: nothing created
        trainer_lib.load_params(cfg, tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
    monkeypatch.setattr(optimizer, "make_optimizer", refuse)
    monkeypatch.setattr(trainer_lib.optimizer, "make_optimizer", refuse)
    in_progress = fresh_run / "checkpoints" / "3.orbax-checkpoint-tmp-1764720000000000"  # a live trainer's save
    in_progress.mkdir()
    session, params, step = trainer_lib.load_params(cfg, fresh_run)
    assert step == 2 and not isinstance(session, trainer_lib.Trainer)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(jax.device_get(params)), strict=True):
        np.testing.assert_array_equal(a, b)  # the parameters alone, exactly as trained
    assert jax.tree.leaves(params)[0].sharding == jax.tree.leaves(session.param_shardings)[0]
    assert pipeline.evaluate_checkpoint(cfg, fresh_run)["eval/loss"] > 0
    pipeline.sample(cfg, fresh_run, ["def "], tokens=4)
    assert (export_run(load_run_config(fresh_run), fresh_run, tmp_path / "hf") / "config.json").exists()
    assert in_progress.exists()  # readers never clean up a save in progress


def _spy_batches(monkeypatch) -> list[set]:
    seen = []
    real = trainer_lib.ModelSession.to_global

    def spy(self, batch):
        seen.append(set(batch))
        return real(self, batch)

    monkeypatch.setattr(trainer_lib.ModelSession, "to_global", spy)
    return seen


def test_production_batches_carry_no_fault_injection_field(fresh_run, tmp_path, monkeypatch):
    seen = _spy_batches(monkeypatch)
    cfg = tiny_config("train.steps=2", "checkpoint.every_steps=100", "eval.every_steps=100")
    pipeline.train(cfg, fresh_run)
    assert seen and all("loss_scale" not in keys for keys in seen)
    seen.clear()
    other = tmp_path / "faults"
    for part in ("data", "tokenizer"):
        shutil.copytree(fresh_run / part, other / part)
    pipeline.train(cfg, other, fault_injector=lambda i: None)
    assert sum("loss_scale" in keys for keys in seen) == 2  # the two training batches (eval batches never)


def test_the_streak_flag_is_read_one_step_late_except_where_the_loop_waits_anyway(fresh_run, monkeypatch):
    """Between log, eval and save steps the loop reads the previous step's flag (already computed while the
    current step runs), never the flag of the step it has just dispatched."""
    latest, reads = {}, []
    real_step, real_check = loop._Loop._train_step, loop._Loop._bad_streak

    def train_step(self, offset):
        metrics = real_step(self, offset)
        latest["id"], latest["step"] = id(metrics), self.step
        return metrics

    def bad_streak(self, checks):
        reads.append((latest["step"], [(step, id(m) == latest["id"]) for step, m in checks]))
        return real_check(self, checks)

    monkeypatch.setattr(loop._Loop, "_train_step", train_step)
    monkeypatch.setattr(loop._Loop, "_bad_streak", bad_streak)
    cfg = tiny_config("train.steps=12", "train.log_every=5", "eval.every_steps=100", "checkpoint.every_steps=100")
    pipeline.train(cfg, fresh_run)
    by_step = dict(reads)
    assert sorted(by_step) == list(range(1, 13))
    for step, checked in by_step.items():
        waits = step % 5 == 0 or step == 12
        expected = ([] if step == 1 or (step - 1) % 5 == 0 else [(step - 1, False)]) + ([(step, True)] if waits else [])
        assert checked == expected, (step, checked)


def test_the_logged_loss_is_the_windows_mean_with_tokens_seen_and_a_training_plot(fresh_run, tmp_path):
    """#24.3: `loss` in metrics.jsonl is the mean over the log window (it was one step's value); tokens seen
    are logged; train.png (loss, learning rate, throughput) is drawn beside eval.png."""
    def rows(run):
        return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}

    every = tmp_path / "every"
    shutil.copytree(fresh_run, every)
    pipeline.train(tiny_config("train.steps=6", "train.log_every=1", "eval.every_steps=6"), every)
    pipeline.train(tiny_config("train.steps=6", "train.log_every=3", "eval.every_steps=6"), fresh_run)
    per_step, windows = rows(every), rows(fresh_run)
    assert sorted(windows) == [3, 6] and [windows[s]["window_steps"] for s in (3, 6)] == [3, 3]
    for end in (3, 6):
        mean = np.mean([per_step[s]["loss"] for s in range(end - 2, end + 1)])
        np.testing.assert_allclose(windows[end]["loss"], mean, rtol=1e-6)
        assert windows[end]["loss_last"] == pytest.approx(per_step[end]["loss"], rel=1e-6)
        assert windows[end]["tokens_seen"] == end * tiny_config().tokens_per_step
    assert (fresh_run / "train.png").stat().st_size > 0 and (fresh_run / "eval.png").exists()
