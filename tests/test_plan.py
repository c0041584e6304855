"""`jaxtrain plan` (#24): a budget and a topology to a config that loads and fits, with the model size from the
scaling law, batch and learning rate from DeepSeek LLM's rules, and remat/microbatches searched by AOT compile
(cost order, the estimate skipping what cannot fit, a failed compile moving on); `compile` suggesting a fit."""

import dataclasses
import importlib.util
import math

import pytest
import yaml

from jaxtrain import cli, plan
from jaxtrain.config import load_config
from jaxtrain.scaling import laws
from jaxtrain.scaling.flops import matmul_params
from jaxtrain.train.aot import CompileReport

GiB = 2**30


def test_a_flops_budget_becomes_a_config_that_loads_with_the_published_rules(tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    assert cli.main(["plan", "--flops", "1e21", "--topology", "v5p-8", "--no-compile", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    cfg = load_config(str(out))  # base: llama-1b plus what the plan set
    law = laws.compute_optimal(1e21)
    assert matmul_params(cfg.model) == pytest.approx(law.params, rel=0.1)
    assert cfg.model.embed_dim == 128 * cfg.model.num_heads and cfg.model.num_heads % cfg.model.num_kv_heads == 0
    assert cfg.model.vocab_size == load_config("llama-1b").model.vocab_size  # the base's tokenizer is kept
    batch = cfg.train.batch_size
    assert batch & (batch - 1) == 0 and batch >= 4  # a power of two, at least one sequence per v5p-8 chip
    assert 0.5 < batch * cfg.data.seq_len / (0.2920 * 1e21 ** 0.3271) < 2
    assert cfg.optimizer.learning_rate == pytest.approx(0.3118 * 1e21 ** -0.125, rel=1e-2)
    assert cfg.train.steps * batch * cfg.data.seq_len == pytest.approx(law.tokens, rel=0.01)
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (1, -1, 1)
    assert "# Memory: not checked (--no-compile)" in out.read_text() and "s/step" in printed and "MFU" in printed
    assert "extrapolated" not in printed  # 1e21 is inside the compute Chinchilla's law was fitted on


def test_chip_hours_and_token_budgets_and_a_budget_far_outside_the_fit(tmp_path):
    base = load_config("llama-1b")
    hours = plan.make_plan(base, "v5p-8", chip_hours=1000, mfu=0.5)
    assert hours.flops == pytest.approx(1000 * 3600 * 459e12 * 0.5)
    tokens = plan.make_plan(base, "v5e-16", tokens=2e10)
    assert tokens.law.tokens == pytest.approx(2e10, rel=1e-3) and tokens.chips == 16
    huge = plan.make_plan(base, "v5p-8", flops=1e27)
    assert any("extrapolated" in n and "5.8e+23" in n for n in huge.notes)
    with pytest.raises(SystemExit):  # one budget only (argparse: mutually exclusive)
        cli.main(["plan", "--flops", "1e21", "--tokens", "1e9", "--topology", "v5p-8", "--no-compile"])
    assert cli.main(["plan", "--flops", "1e21", "--topology", "v9-8", "--no-compile"]) == 2  # named in one line


@pytest.mark.parametrize("args, says", [
    (["--chip-hours=-5"], "--chip-hours: must be a positive finite number, got -5"),
    (["--flops", "0"], "--flops: must be a positive finite number, got 0"),
    (["--flops", "nan"], "--flops: must be a positive finite number, got nan"),
    (["--flops", "inf"], "--flops: must be a positive finite number, got inf"),
    (["--flops", "1e21", "--mfu", "0"], "--mfu: must be in (0, 1], got 0"),
    (["--flops", "1e21", "--mfu", "2"], "--mfu: must be in (0, 1], got 2"),
    (["--flops", "1e21", "--constants", "missing.json"], "--constants missing.json: cannot read it"),
    (["--flops", "1e21", "--constants", "broken.json"], "--constants broken.json: not a scaling_fit.json"),
    (["--flops", "1e21", "--constants", "empty.json"], "--constants empty.json: not a scaling_fit.json"),
])
def test_bad_budgets_mfu_and_constants_are_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys,
                                                                                args, says):
    """From a new user's trial: these gave tracebacks (complex powers, NaN, a division by zero after the YAML
    was written) or, for a constants file without constants, silently used Epoch AI's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.json").write_text("{\n")
    (tmp_path / "empty.json").write_text('{"constants": {}}')
    assert cli.main(["plan", *args, "--topology", "v5p-8", "--no-compile", "--out", "p.yaml"]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert not (tmp_path / "p.yaml").exists()


def test_shapes_keep_eight_kv_heads_and_say_which_constants_they_used(tmp_path):
    """The trial's plans had 37 heads (1 KV) and 15 heads (1 KV) under a comment promising Llama 3's 8 KV heads."""
    for flops, topology in ((1e20, "v5e:2x4"), (1e22, "v4-32"), (6.4e20, "v5e-16"), (1e23, "v6e-8")):
        m = plan.make_plan(load_config("llama-1b"), topology, flops=flops).cfg.model
        assert m.num_kv_heads == 8 and m.num_heads % 8 == 0, (flops, m)
        assert 64 <= m.embed_dim / m.num_layers <= 256  # near Llama's width per layer
    fit = tmp_path / "fit.json"
    fit.write_text('{"constants": {"E": 1.8, "A": 480, "B": 2000, "alpha": 0.35, "beta": 0.36}, '
                   '"flops_range": [1e11, 1e13]}')
    p = plan.make_plan(load_config("llama-1b"), "v5p-8", flops=1e21, constants_file=str(fit))
    text = plan.render_yaml(p, "llama-1b")
    assert f"constants: {fit} (jaxtrain scaling fit)" in text and "extrapolated" in text  # 1e21 >> 10 x 1e13
    assert "not checked (--no-compile)" in text and "(AOT search)" not in text
    assert any("exceed the HBM of all 4 chips" in n for n in plan.make_plan(load_config("llama-1b"), "v5p-8",
                                                                             flops=1e27).notes)


def _report(used: int, hbm: int = 95 * GiB) -> CompileReport:
    return CompileReport("v5p:2x2x1", "TPU v5", 4, hbm, used, 0, 0, 0.0, 1e15, 60.0)


def test_the_memory_search_compiles_in_cost_order_and_moves_on_after_a_failed_compile():
    p = plan.make_plan(load_config("llama-1b"), "v5p-8", flops=1e21)
    order = [(c.model.remat, c.train.microbatches) for c in plan.candidates(p.cfg, p.chips)]
    assert order[0] == ("none", 1) and order.index(("full", 1)) > order.index(("none", 2))
    assert all(p.cfg.train.batch_size // mb >= plan.MIN_ROWS_NO_REMAT * 4 for r, mb in order if r == "none")
    compiled = []

    def compile_fn(cfg):  # the real compiler said: twice the estimate
        compiled.append((cfg.model.remat, cfg.train.microbatches))
        return _report(int(2 * plan.estimate_bytes(cfg, 4)))

    result = plan.search_memory(p, compile_fn)
    first = next(s for s, c in zip(order, plan.candidates(p.cfg, 4)) if plan.estimate_bytes(c, 4) <= 0.85 * 95 * GiB)
    assert compiled[0] == first  # the estimate skipped what it knew cannot fit; no compile was wasted on them
    assert len(compiled) >= 2 and result.fits  # the first did not fit; the search went on to one that does
    assert (result.cfg.model.remat, result.cfg.train.microbatches) == compiled[-1]
    assert all(2 * plan.estimate_bytes(c, 4) > 0.95 * 95 * GiB for c in plan.candidates(p.cfg, 4)
               if (c.model.remat, c.train.microbatches) in compiled[:-1])


def test_a_failed_compile_without_remat_does_not_scale_the_estimate_of_full_remat():
    """The v5e-8 search once skipped remat=full with 4 microbatches (a fit) because no-remat's 3x error was applied
    to full remat's estimate; each policy keeps its own correction."""
    p = plan.make_plan(load_config("llama-1b"), "v5e-8", flops=1e19)
    p.cfg = load_config("llama-1b", ["mesh.data=1", "mesh.fsdp=-1"])  # the preset's batch of 256 on 8 chips
    compiled = []

    def compile_fn(cfg):
        compiled.append((cfg.model.remat, cfg.train.microbatches))
        factor = 3.0 if cfg.model.remat == "none" else 1.0
        return _report(int(factor * plan.estimate_bytes(cfg, 8)), hbm=16 * GiB)

    result = plan.search_memory(p, compile_fn)
    first_full = next(c.train.microbatches for c in plan.candidates(p.cfg, 8)
                      if c.model.remat == "full" and plan.estimate_bytes(c, 8) <= 0.85 * 16 * GiB)
    assert compiled[0][0] == "none" and result.fits
    assert compiled[-1] == ("full", first_full) and sum(r == "full" for r, _ in compiled) == 1


def test_a_state_too_big_for_the_slice_is_told_to_add_chips():
    p = plan.make_plan(load_config("llama-1b"), "v5e-8", flops=1e24)  # ~40B parameters on 8 x 16 GiB
    result = plan.search_memory(p, lambda cfg: _report(int(plan.estimate_bytes(cfg, 8)), hbm=16 * GiB))
    assert result.fits is False and any("more chips" in n for n in result.notes)
    yaml_text = plan.render_yaml(result, "llama-1b")
    assert "DOES NOT FIT" in yaml_text and yaml.safe_load(yaml_text)["base"] == "llama-1b"


def test_a_failed_compile_prints_no_zero_figures_and_suggests_a_fit():
    failed = dataclasses.replace(_report(170 * GiB, hbm=16 * GiB), compiler_error="RESOURCE_EXHAUSTED: out of HBM")
    text = failed.render()
    assert "0.000e+00" not in text and "0 Pallas" not in text and "did not compile" in text
    assert "154.00 GiB over)" in text and "spare) ->" not in text  # not "-147456.0 MiB spare"
    old_preset = ["model.remat=none", "train.microbatches=1"]  # llama-1b before #24: 170.67 GiB on a v5e-8
    cfg = load_config("llama-1b", old_preset)
    suggestion = plan.suggest_fit(cfg, "v5e-8", 170 * GiB)
    overrides = dict(part.split("=") for part in suggestion.split()[1:3])
    assert set(overrides) == {"model.remat", "train.microbatches"}
    fixed = load_config("llama-1b", [*old_preset, *(f"{k}={v}" for k, v in overrides.items())])
    scale = 170 * GiB / plan.estimate_bytes(cfg, 8)
    assert plan.estimate_bytes(fixed, 8) * scale <= 0.85 * 16 * GiB


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed; "
                    "`pip install -e '.[tpu]'` (python3 dev.py test installs it) to run the AOT check")
def test_plan_compiles_its_config_for_the_topology_and_it_fits(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"base": "tiny", "data": {"seq_len": 128}, "model": {"max_seq_len": 128}}))
    out = tmp_path / "plan.yaml"
    assert cli.main(["plan", "--flops", "1e15", "--topology", "v5e:2x2", "--config", str(base), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "compiled        remat=none microbatches=1" in printed and "-> fits" in printed
    cfg = load_config(str(out))
    assert cfg.data.seq_len == 128 and math.log2(cfg.train.batch_size).is_integer()
    assert "# Memory: fits by AOT compile for v5e:2x2." in out.read_text()
