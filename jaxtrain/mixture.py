"""Mixture design from proxy runs, the way RegMix and Data Mixing Laws choose a mixture before the big run:
small proxies trained on sampled mixtures of a run's sources, a law fitted from the mixture to the held-out
loss on a target source, and the mixture that law says is best.

    jaxtrain mixture --run-dir RUN --target SOURCE [--proxies 16] [--steps S] [--seeds 0] [--out DIR]

- The target is held out of training in every proxy (`train: false`, as `jaxtrain ablate` does); the other
  trained sources are mixed. Each proxy is an ordinary run directory under OUT with the base run's model,
  tokenizer and token shards (copied, not rebuilt), `data.sources[*].weight` set to its mixture (every trained
  source weighted: relative shares), and --steps steps; `--proxy-overrides model.num_layers=2 ...` makes the
  proxies smaller than the base run's model.
- Mixtures: the natural one (token shares of the trained sources) first, then draws from a Dirichlet centred
  on it (seed --sample-seed), every share inside the repetition bound of `jaxtrain.scaling.mixing`: at the
  planned full run (the base run's train.steps x tokens_per_step tokens) no source may be repeated more than
  max(--max-epochs (4), the natural mixture's epochs) epochs, so share_j <= epochs * tokens_j / full tokens.
- Score: bits per byte on the base run's own held-out target shards (`ablate.score`: the same tokens for
  every proxy). Seeds of one mixture are averaged.
- Fit: L(r) = c + k exp(sum_j t_j r_j) (`mixing.fit_law`) on the proxies' mean bpb; its leave-one-out error
  is reported beside that of predicting the mean. The proposal minimizes the fitted L under the same bounds;
  outside the convex hull of the sampled mixtures it is flagged "extrapolated".

Outputs in OUT: mixture.jsonl (a line per finished proxy and seed), mixture.md, mixture_fit.json (the same
numbers), mixture.png (predicted vs measured), proposal.yaml (`base:` the run's config, `data.sources` with the
proposed weights). A killed search resumes: finished proxies are read back, a half-trained one continues from
its checkpoint. Another target, budget or proxy override in the same OUT is refused.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import statistics
from typing import Sequence

import numpy as np
import yaml
from matplotlib.figure import Figure

from jaxtrain import ablate, pipeline, yamlconf
from jaxtrain.config import RunConfig, from_dict, to_dict
from jaxtrain.data import shards
from jaxtrain.data.config import SourceConfig
from jaxtrain.errors import ConfigError
from jaxtrain.rundir import RunDir
from jaxtrain.runconfig import Resolved
from jaxtrain.scaling import mixing
from jaxtrain.utils import log

RESULTS = "mixture.jsonl"
HULL_TOLERANCE = 1e-4  # L1 distance to the sampled mixtures' hull still called inside
# The law's optimum is recommended only when its leave-one-out error is under this share of the error of
# predicting the proxies' mean: on 12 proxies of pure seed noise (no mixture effect) 2 of 40 draws beat the mean
# by chance and none by 20%, while a real law under the same noise scored 0.15 (tests/test_mixture.py).
TRUST_RATIO = 0.8


@dataclasses.dataclass(frozen=True)
class Search:
    """What a search on one base run and target samples: the trained sources, their train tokens, the full
    run's token budget, the share caps and the proxies' mixtures (P x K)."""
    sources: tuple[str, ...]
    tokens: tuple[int, ...]
    full_tokens: int
    caps: np.ndarray
    mixtures: np.ndarray

    @property
    def natural(self) -> np.ndarray:
        return np.asarray(self.tokens, dtype=np.float64) / sum(self.tokens)

    @property
    def uniform(self) -> np.ndarray:
        return mixing.bound(np.full(len(self.sources), 1.0 / len(self.sources)), self.caps)

    def epochs(self, shares: Sequence[float], budget: int) -> dict[str, float]:
        return {s: round(budget * r / n, 4) for s, r, n in zip(self.sources, shares, self.tokens)}


def check_search(cfg: RunConfig, run: RunDir, target: str, proxies: int, max_epochs: float) -> tuple[str, ...]:
    """The trained sources a search mixes (the run's, the target held out), or a one-line refusal."""
    if target not in cfg.data.source_names:
        raise ConfigError(f"--target: {target!r} is not a source of {run}; choose one of {cfg.data.source_names}.")
    if proxies < 3:
        raise ConfigError(f"--proxies: {proxies} is too few to fit and check a mixing law; give at least 3 "
                          "(16 or more for a useful search).")
    trained = tuple(s.name for s in cfg.data.sources if s.train and s.name != target)
    if len(trained) < 2:
        raise ConfigError(f"--target {target}: leaves {list(trained)} to train on (data.sources with train: true, "
                          "the target held out); a mixture needs at least 2 trained sources: add a source to the run.")
    if max_epochs <= 0:
        raise ConfigError(f"--max-epochs: must be positive, got {max_epochs}.")
    return trained


def plan_search(base: Resolved, target: str, proxies: int, max_epochs: float = mixing.MAX_EPOCHS,
                sample_seed: int = 0) -> Search:
    """The search on a prepared base run: its trained sources' token counts, caps and sampled mixtures."""
    cfg = base.cfg
    trained = check_search(cfg, base.run, target, proxies, max_epochs)
    counts = shards.token_counts(base.run)
    tokens = tuple(int(counts[shards.split_name("train", s)]["tokens"]) for s in trained)
    full = cfg.train.steps * cfg.tokens_per_step
    caps = mixing.share_caps(tokens, full, max_epochs)
    natural = np.asarray(tokens, dtype=np.float64) / sum(tokens)
    if np.allclose(caps, natural):
        log(f"[mixture] the full run already repeats every source {full / sum(tokens):.1f} epochs at the natural "
            f"mixture, above --max-epochs {max_epochs:g}: the repetition bound leaves only the natural mixture")
    return Search(trained, tokens, full, caps, mixing.sample_mixtures(natural, caps, proxies, sample_seed))


def proxy_config(base: Resolved, search: Search, index: int, seed: int, target: str, out_dir: pathlib.Path,
                 steps: int, overrides: Sequence[str] = ()) -> RunConfig:
    """Proxy `index`'s run config: the base run's (with the proxy overrides), its mixture as weights, the target
    held out, `steps` steps, one checkpoint and one evaluation at the end."""
    cfg = from_dict(yamlconf.apply_overrides(to_dict(base.cfg), overrides)) if overrides else base.cfg
    share = dict(zip(search.sources, (round(float(r), 6) for r in search.mixtures[index])))
    sources = tuple(dataclasses.replace(s, train=False) if s.name == target
                    else dataclasses.replace(s, weight=share[s.name]) if s.name in share else s
                    for s in cfg.data.sources)
    return dataclasses.replace(
        cfg, name=f"{base.cfg.name}-mixture-p{index:02d}-s{seed}", run_dir=str(out_dir / f"p{index:02d}-s{seed}"),
        data=dataclasses.replace(cfg.data, sources=sources, mixture_temperature=0.0, mixture_schedule=()),
        train=dataclasses.replace(cfg.train, seed=seed, steps=steps, log_every=max(1, min(cfg.train.log_every, steps))),
        checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=steps, keep=1),
        eval=dataclasses.replace(cfg.eval, every_steps=steps),
    )


def _share_data(base: RunDir, run: RunDir) -> None:
    """The base run's prepared data and tokenizer, copied into a proxy (through a temporary name: a killed
    copy is redone, never taken for a whole one)."""
    for src, dst in ((base.data, run.data), (base.tokenizer_dir, run.tokenizer_dir)):
        if not dst.exists():
            partial = pathlib.Path(str(dst) + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(src, partial)
            partial.rename(dst)


def _refuse_another_search(out_dir: pathlib.Path, results: list[dict], search: Search, key: tuple) -> None:
    for r in results:
        theirs = (r["target"], r["budget_tokens"], tuple(r["proxy_overrides"]))
        if theirs != key:
            raise ConfigError(f"--out {out_dir}: holds a mixture search on target {theirs[0]!r} with proxies of "
                              f"{theirs[1]} tokens (overrides {list(theirs[2])}); this one is on {key[0]!r} with "
                              f"{key[1]} (overrides {list(key[2])}). Give another --out.")
        planned = search.mixtures[r["proxy"]] if r["proxy"] < len(search.mixtures) else None
        if planned is not None and not np.allclose([r["mixture"].get(s, -1) for s in search.sources], planned,
                                                   atol=1e-5):
            raise ConfigError(f"--out {out_dir}: proxy {r['proxy']} was trained on {r['mixture']}, but this search "
                              f"samples {dict(zip(search.sources, (round(float(x), 6) for x in planned)))} (the base run's sources, "
                              "token counts, budget, --max-epochs or --sample-seed changed). Give another --out.")


def run_mixture(base: Resolved, target: str, out_dir: pathlib.Path, proxies: int = 16, steps: int | None = None,
                seeds: Sequence[int] = (0,), proxy_overrides: Sequence[str] = (),
                max_epochs: float = mixing.MAX_EPOCHS, sample_seed: int = 0) -> dict:
    """Train and score every (proxy, seed) not yet in OUT/mixture.jsonl; fit, propose, write the reports.
    Returns the fit (`fit_search`)."""
    if steps is not None and steps <= 0:
        raise ConfigError(f"--steps: must be positive, got {steps} (leave it out for the run's train.steps).")
    check_search(base.cfg, base.run, target, proxies, max_epochs)  # refused before any data work
    pipeline.prepare(base, through="shards")  # the shards and tokenizer every proxy shares
    search = plan_search(base, target, proxies, max_epochs, sample_seed)
    steps = steps or base.cfg.train.steps
    probe = proxy_config(base, search, 0, seeds[0], target, out_dir, steps, proxy_overrides)
    budget = steps * probe.tokens_per_step
    results_path = out_dir / RESULTS
    _refuse_another_search(out_dir, ablate.read_results(results_path), search, (target, budget, tuple(proxy_overrides)))
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {(r["proxy"], r["seed"]) for r in ablate.read_results(results_path)}
    for index in range(proxies):
        for seed in seeds:
            if (index, seed) in done:
                continue
            cfg = proxy_config(base, search, index, seed, target, out_dir, steps, proxy_overrides)
            _share_data(base.run, RunDir(cfg.run_dir))
            shares = search.mixtures[index]
            log(f"[mixture] proxy {index + 1}/{proxies}, seed {seed}: "
                + ", ".join(f"{s} {r:.3f}" for s, r in zip(search.sources, shares)) + f"; {steps} steps")
            pipeline.train(cfg, cfg.run_dir, prepare_data=True)
            record = {"proxy": index, "seed": seed, "target": target, "budget_tokens": budget, "steps": steps,
                      "proxy_overrides": list(proxy_overrides),
                      "mixture": {s: round(float(r), 6) for s, r in zip(search.sources, shares)},
                      "epochs": search.epochs(shares, budget), **ablate.score(cfg, base.run, target)}
            log(f"[mixture] proxy {index + 1}/{proxies}, seed {seed}: {target} {record['target_bpb']:.4f} bits/byte")
            with results_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
    fit = {**fit_search(ablate.read_results(results_path), search), "max_epochs": max_epochs,
           "sample_seed": sample_seed}  # the bound and the draws the proposal was made under
    write_reports(fit, search, base, target, out_dir)
    return fit


def fit_search(results: list[dict], search: Search) -> dict:
    """The law fitted on every finished proxy (seeds averaged), its leave-one-out error, and the proposal."""
    by_proxy: dict[int, list[dict]] = {}
    for r in results:
        by_proxy.setdefault(r["proxy"], []).append(r)
    proxies = [{"proxy": i, "mixture": rs[0]["mixture"], "seeds": len(rs),
                "target_bpb": statistics.mean(r["target_bpb"] for r in rs),
                "spread": max(r["target_bpb"] for r in rs) - min(r["target_bpb"] for r in rs)}
               for i, rs in sorted(by_proxy.items())]
    r_PxK = np.asarray([[p["mixture"][s] for s in search.sources] for p in proxies])
    y_P = np.asarray([p["target_bpb"] for p in proxies])
    law = mixing.fit_law(r_PxK, y_P)
    held = mixing.held_out_errors(r_PxK, y_P)
    for p, fitted, predicted in zip(proxies, law.predict(r_PxK), held["predicted"]):
        p["fitted_bpb"], p["held_out_bpb"] = float(fitted), predicted
    starts = np.stack([*r_PxK, search.natural, search.uniform])
    proposal = mixing.propose(law, search.caps, starts)
    distance = mixing.hull_distance(proposal, r_PxK)
    mixtures = {"proposal": proposal, "best inside the sampled hull": mixing.propose_in_hull(law, r_PxK),
                "natural": search.natural, "uniform": search.uniform, "best proxy": r_PxK[int(np.argmin(y_P))]}
    found = {}
    for name, r in mixtures.items():
        found[name] = {"shares": [round(float(x), 6) for x in r], "predicted_bpb": float(law.predict(r)[0])}
        trained = [i for i in range(len(y_P)) if np.allclose(r_PxK[i], r, atol=1e-5)]  # a proxy measured it
        if trained:
            found[name]["measured_bpb"] = float(y_P[trained[0]])
    # The law's optimum is recommended only when the law predicts held-out proxies clearly better than their mean
    # (TRUST_RATIO); otherwise its optimum has no support and the natural mixture is kept (proposal.yaml says so).
    trusted = held["mae"] < TRUST_RATIO * held["mean_baseline_mae"] and float(law.predict(proposal)[0]) > 0
    return {"sources": list(search.sources), "proxies": proxies, "law": dataclasses.asdict(law),
            "held_out_mae": held["mae"], "mean_baseline_mae": held["mean_baseline_mae"],
            "recommended": "proposal" if trusted else "natural",
            "caps": [float(u) for u in search.caps], "hull_distance": distance,
            "extrapolated": distance > HULL_TOLERANCE, "mixtures": found}


def write_reports(fit: dict, search: Search, base: Resolved, target: str, out_dir: pathlib.Path) -> None:
    sources, proxies = fit["sources"], fit["proxies"]
    law = fit["law"]
    where = ("extrapolated: outside the convex hull of the sampled mixtures (L1 distance "
             f"{fit['hull_distance']:.3f}); train it before trusting it" if fit["extrapolated"]
             else "inside the convex hull of the sampled mixtures")
    lines = [f"# Mixture search: held-out bits per byte on `{target}` (lower is better)", "",
             f"{len(proxies)} proxies of {len(sources)} trained sources; the full run ({search.full_tokens} "
             f"tokens) may give each source at most its cap (repetition bound: --max-epochs "
             f"{fit.get('max_epochs', mixing.MAX_EPOCHS):g}; --sample-seed {fit.get('sample_seed', 0)}).", "",
             "| proxy | seeds | " + " | ".join(sources) + " | bpb | seed spread | fitted | held-out prediction |",
             "|---:|---:|" + "---:|" * len(sources) + "---:|---:|---:|---:|"]
    for p in proxies:
        spread = f"{p['spread']:.4f}" if p["seeds"] > 1 else "n/a"
        lines.append(f"| {p['proxy']} | {p['seeds']} | " + " | ".join(f"{p['mixture'][s]:.3f}" for s in sources)
                     + f" | {p['target_bpb']:.4f} | {spread} | {p['fitted_bpb']:.4f} | {p['held_out_bpb']:.4f} |")
    terms = " ".join(f"{t:+.3f}·r[{s}]" for s, t in zip(sources, law["t"]))
    lines += ["", "## Fit", "", f"L(r) = {law['c']:.4f} {law['k']:+.4g} · exp({terms})", "",
              f"Leave-one-out mean absolute error: **{fit['held_out_mae']:.4f} bpb** (predicting the other proxies' "
              f"mean instead: {fit['mean_baseline_mae']:.4f} bpb)"
              + ("" if fit["recommended"] == "proposal" else
                 f": the law is not {1 - TRUST_RATIO:.0%} better than the mean; its optimum is not recommended")
              + ".", "",
              "## Proposal", "", "| mixture | " + " | ".join(sources) + " | predicted bpb | measured bpb |",
              "|---|" + "---:|" * len(sources) + "---:|---:|"]
    lines.append("| cap (repetition bound) | " + " | ".join(f"{u:.3f}" for u in fit["caps"]) + " | | |")
    for name, m in fit["mixtures"].items():
        measured = f"{m['measured_bpb']:.4f}" if "measured_bpb" in m else "not trained"
        lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in m["shares"])
                     + f" | {_bpb(m['predicted_bpb'])} | {measured} |")
    if fit["recommended"] == "proposal":
        lines += ["", f"The proposal is {where}. The best inside the hull is what the proxies support without "
                  "extrapolating. `proposal.yaml` holds the proposal as config: "
                  f"`jaxtrain train --config {out_dir / 'proposal.yaml'} --run-dir NEW_RUN`."]
    else:
        lines += ["", "**`proposal.yaml` keeps the natural mixture**: the law does not predict held-out proxies "
                  f"at least {1 - TRUST_RATIO:.0%} better than their mean, so its optimum (the proposal row, "
                  f"{where}) has no support in these proxies. Train them longer (--steps) or with more --seeds "
                  "(the spread between seeds shows the noise a mixture must beat), then rerun with a new --out."]
    (out_dir / "mixture.md").write_text("\n".join(lines) + "\n")
    (out_dir / "mixture_fit.json").write_text(json.dumps(fit, indent=1) + "\n")
    (out_dir / "proposal.yaml").write_text(_proposal_yaml(fit, base, target, where))
    _plot(fit, target, out_dir / "mixture.png")


def _bpb(value: float) -> str:
    """A predicted bits per byte, or what it means when the fitted law leaves the possible range."""
    return f"{value:.4f}" if value > 0 else "n/a (the law diverges here)"


def _proposal_yaml(fit: dict, base: Resolved, target: str, where: str) -> str:
    share = dict(zip(fit["sources"], fit["mixtures"][fit["recommended"]]["shares"]))
    defaults = {f.name: yamlconf.to_dict(f.default) for f in dataclasses.fields(SourceConfig)
                if f.default is not dataclasses.MISSING}
    sources = []
    for s in to_dict(base.cfg)["data"]["sources"]:
        s["train"] = s["name"] != target and s["train"]
        if s["name"] in share:
            s["weight"] = share[s["name"]]
        sources.append({k: v for k, v in s.items() if k in ("name", "weight", "train") or v != defaults.get(k)})
    predicted = {name: _bpb(m["predicted_bpb"]) for name, m in fit["mixtures"].items()}
    if fit["recommended"] == "proposal":
        header = (f"# jaxtrain mixture: the proposed mixture for held-out `{target}` ({len(fit['proxies'])} proxies; "
                  f"leave-one-out error {fit['held_out_mae']:.4f} bpb;\n# predicted {predicted['proposal']} bpb vs "
                  f"natural {predicted['natural']}); {where}.\n")
    else:
        header = (f"# jaxtrain mixture: the NATURAL mixture for held-out `{target}`: the law fitted on "
                  f"{len(fit['proxies'])} proxies does not predict them {1 - TRUST_RATIO:.0%} better\n# than their mean (leave-one-out error "
                  f"{fit['held_out_mae']:.4f} vs {fit['mean_baseline_mae']:.4f} bpb), so its optimum is not proposed; "
                  "see mixture.md.\n")
    header += "# The target stays held out (train: false), as in every proxy.\n"
    return header + yaml.safe_dump({"base": str(base.run.config), "data": {"sources": sources}}, sort_keys=False)


def _plot(fit: dict, target: str, path: pathlib.Path) -> None:
    proxies = fit["proxies"]
    measured = [p["target_bpb"] for p in proxies]
    fig = Figure(figsize=(4.5, 4.5))  # no pyplot: no global backend state
    ax = fig.subplots()
    ax.scatter(measured, [p["held_out_bpb"] for p in proxies], color="#c0392b", s=18, label="held out (leave one out)")
    ax.scatter(measured, [p["fitted_bpb"] for p in proxies], facecolors="none", edgecolors="k", s=24, label="fitted")
    values = measured + [p["held_out_bpb"] for p in proxies] + [p["fitted_bpb"] for p in proxies]
    lo, hi = min(values), max(values)
    ax.plot([lo, hi], [lo, hi], color="#888", lw=1)
    ax.set_xlabel(f"measured {target} bpb")
    ax.set_ylabel("predicted bpb")
    ax.legend(fontsize=8)
    ax.ticklabel_format(useOffset=False)  # close values: plain tick labels, not an offset run together
    ax.tick_params(axis="x", labelrotation=45)
    verdict = "trusted" if fit["recommended"] == "proposal" else "not trusted"
    fig.suptitle(f"Mixing law: held-out MAE {fit['held_out_mae']:.4f} vs mean's {fit['mean_baseline_mae']:.4f} bpb "
                 f"({verdict})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
