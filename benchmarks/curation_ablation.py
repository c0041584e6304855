"""Does curation make a better model? `jaxtrain ablate` on the offline web crawl (issue #20).

    python benchmarks/curation_ablation.py [--steps 300] [--seeds 0 1] [--out runs/ablation-bench]
        [--json benchmarks/results/curation_ablation.json]

The crawl: `jaxtrain.data.sample_crawl` (about 3,000 WARC records from pydoc's HTML, with navigation,
mirrors, near copies, spam, five other languages, binaries, 404s and damaged records). The base run:
that crawl as the `web` source (English only, C4 and Gopher quality rules, exact and near dedup, the
learned classifier keeping the better-scored half) and the Python documentation (`stdlib_docs`) as the
trusted target, never trained on. The demo's model, tokenizer size and batch; the same token budget
for every variant. Variants: raw extracted text, heuristics and dedup, heuristics and dedup and the
classifier; two seeds each. The score: bits per byte on the base run's held-out stdlib_docs shards.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import yaml

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from jaxtrain import ablate, runconfig  # noqa: E402  (after the platform flags)
from jaxtrain.config import CONFIG_DIR  # noqa: E402
from jaxtrain.data import sample_crawl  # noqa: E402


def base_config(out: pathlib.Path, crawl: pathlib.Path, steps: int, keep_fraction: float) -> pathlib.Path:
    cfg = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    web = next(s for s in cfg["data"]["sources"] if s["name"] == "web")
    web["path"] = str(crawl / "*.warc.gz")
    cfg["data"]["sources"] = [web, {"name": "stdlib_docs", "type": "embedded", "content": "docs"}]
    cfg["data"]["quality_classifier"] = {"reference": ["stdlib_docs"], "apply_to": ["web"],
                                      "keep_fraction": keep_fraction}
    cfg["name"], cfg["run_dir"] = "ablation-bench", str(out / "base")
    cfg["train"]["steps"] = steps
    cfg["eval"]["tasks"] = False  # the score is the target's bits per byte
    path = out / "base.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--modules", type=int, default=0, help="stdlib modules' pages in the crawl (0 = all)")
    p.add_argument("--spam", type=float, default=0.75, help="spam pages per module page in the crawl")
    p.add_argument("--keep-fraction", type=float, default=0.5, help="the classifier's kept share of the crawl")
    p.add_argument("--out", default="runs/ablation-bench")
    p.add_argument("--json", default="benchmarks/results/curation_ablation.json")
    a = p.parse_args(argv)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = sample_crawl.build(str(out / "crawl"), modules=a.modules, spam=a.spam)
    start = time.perf_counter()
    base = runconfig.resolve(str(base_config(out, out / "crawl", a.steps, a.keep_fraction)), [], str(out / "base"), data=True)
    results = ablate.run_ablation(base, "stdlib_docs", out / "ablations", ablate.VARIANTS, a.seeds)
    record = {"machine": platform.platform(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
              "argv": argv if argv is not None else sys.argv[1:],
              "crawl_records": manifest["records"], "crawl_kinds": manifest["kinds"], "steps": a.steps,
              "wall_s": round(time.perf_counter() - start), "runs": results, "summary": ablate.summarize(results),
              "curation": {v: json.loads((out / "ablations" / f"{v}-s{a.seeds[0]}" / "data" / "clean" / "report.json")
                                         .read_text())["web"] for v in ablate.VARIANTS}}
    pathlib.Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.json).write_text(json.dumps(record, indent=1))
    print((out / "ablations" / "ablation.md").read_text())
    return record


if __name__ == "__main__":
    main()
