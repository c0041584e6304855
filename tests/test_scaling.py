import numpy as np
import pytest

from jaxtrain import cli
from jaxtrain.plan import nearest_preset
from jaxtrain.scaling import laws
from jaxtrain.sweep import fit_sweep, rung_config

from conftest import tiny_config


def test_fit_recovers_known_constants_from_synthetic_losses():
    true = laws.LawConstants(E=1.7, A=400.0, B=1500.0, alpha=0.33, beta=0.37)
    n, d = np.meshgrid(np.geomspace(1e7, 1e10, 7), np.geomspace(1e9, 1e12, 7))
    fit = laws.fit_law(n.ravel(), d.ravel(), true.loss(n.ravel(), d.ravel()))
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, name) == pytest.approx(getattr(true, name), rel=0.02), name


def test_isoflop_parabolas_find_the_optimum():
    true = laws.LawConstants(E=1.7, A=400.0, B=1500.0, alpha=0.33, beta=0.37)
    budgets = np.repeat([1e17, 1e18, 1e19], 7)
    sizes = np.tile(np.geomspace(3e6, 3e9, 7), 3)
    optima = laws.isoflop_optima(budgets, sizes, true.loss(sizes, budgets / (6 * sizes)))
    for c, n_opt in optima.items():
        assert n_opt == pytest.approx(laws.compute_optimal(c, true).params, rel=0.2)
    k, p = laws.power_law(list(optima), list(optima.values()))
    assert p == pytest.approx(true.beta / (true.alpha + true.beta), abs=0.03)


def test_plan_matches_chinchilla_at_its_budget(capsys):
    plan = laws.compute_optimal(5.76e23)  # Chinchilla: 70B parameters, 1.4T tokens
    assert plan.params == pytest.approx(70e9, rel=0.1) and plan.tokens == pytest.approx(1.4e12, rel=0.1)
    assert 15 < plan.tokens_per_param < 25
    assert cli.main(["scaling", "plan", "--chip-hours", "1000", "--chip", "v5p", "--mfu", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "8.262e+20 FLOPs" in out and "tokens per parameter" in out and "nearest preset" in out
    assert nearest_preset(1.1e9)[0] == "llama-1b"


def test_sweep_rungs_spend_the_budget_and_fit_writes_a_plot(tmp_path):
    cfg = rung_config(tiny_config(), layers=2, width=64, budget=1e12, run_dir=tmp_path)
    from jaxtrain.scaling.flops import flops_per_token

    spent = cfg.train.steps * cfg.train.batch_size * cfg.data.seq_len * flops_per_token(cfg.model, cfg.data.seq_len)
    assert spent == pytest.approx(1e12, rel=0.05)
    true = laws.LawConstants(E=2.0, A=300.0, B=900.0, alpha=0.35, beta=0.35)
    rows = [{"flops": c, "layers": 1, "width": 1, "params": n, "tokens": c / (6 * n), "loss": float(true.loss(n, c / (6 * n)))}
            for c in (1e15, 1e16) for n in np.geomspace(1e5, 1e7, 4)]
    summary = fit_sweep(rows, tmp_path)
    assert (tmp_path / "scaling_fit.png").stat().st_size > 10_000
    assert summary["constants"]["alpha"] == pytest.approx(0.35, rel=0.05)
