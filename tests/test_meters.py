"""The loop's accounting objects on their own: throughput/MFU windows and the realized mixture."""

import numpy as np
import pytest

from jaxtrain.train.meters import MixtureMeter, Throughput


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_throughput_counts_only_the_window_since_the_last_restart():
    clock = _Clock()
    meter = Throughput(tokens_per_step=1000, n_chips=4, flops_per_token=6e6, peak=1e12, clock=clock)
    clock.now = 30.0  # compilation: restarted away
    meter.restart()
    for _ in range(10):
        meter.step()
        clock.now += 0.5
    got = meter.measure()
    assert got["step_time_s"] == pytest.approx(0.5) and got["tokens_per_s"] == pytest.approx(2000)
    assert got["tokens_per_s_per_chip"] == pytest.approx(500)
    assert got["mfu"] == pytest.approx(6e6 * 2000 / (4 * 1e12))  # model FLOPs/s over the chips' peak
    clock.now += 100.0  # an eval between windows
    meter.restart()
    meter.step()
    clock.now += 1.0
    assert meter.measure()["step_time_s"] == pytest.approx(1.0)


def test_throughput_without_a_published_peak_reports_no_mfu():
    meter = Throughput(tokens_per_step=10, n_chips=1, flops_per_token=1.0, peak=None, clock=_Clock())
    assert meter.measure()["mfu"] is None


def _batch(source_ids, mask):
    return {"source_ids": np.asarray(source_ids), "loss_mask": np.asarray(mask)}


def test_mixture_meter_counts_target_tokens_per_window_and_per_report():
    meter = MixtureMeter(["code", "docs"])
    meter.add(_batch([[0, 0, 1, 1]], [[1, 1, 1, 0]]))  # the padded token does not count
    assert meter.window_shares() == {"mix/code": pytest.approx(2 / 3), "mix/docs": pytest.approx(1 / 3)}
    meter.add(_batch([[1, 1, 1, 1]], [[1, 1, 1, 1]]))
    # the report covers both windows, including the one not yet logged, each token once
    assert meter.report([0.5, 0.5]) == "code 28.6% (configured 50.0%), docs 71.4% (configured 50.0%)"
    assert meter.window_shares() == {"mix/code": 0.0, "mix/docs": 1.0}
    assert not meter.since_report.any()
