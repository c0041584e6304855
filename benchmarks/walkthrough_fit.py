"""Does every TPU command the docs name fit the topology it names? AOT-compiled from this machine (issue #24).

    python benchmarks/walkthrough_fit.py [--out benchmarks/results/walkthrough_fit.md]

Each row is a command of docs/pods-and-tpus.md (the config, overrides and topology it runs with), compiled
with `jaxtrain compile` in its own process (libtpu describes the topology; nothing runs on a TPU), and the
plan `jaxtrain plan --flops 1e21 --topology v5p-8` followed by `jaxtrain compile` of the config it wrote.
"Fits" means at least 5% of HBM spare (jaxtrain.train.aot.HBM_HEADROOM).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
JAXTRAIN = [sys.executable, "-m", "jaxtrain.cli"]
# (where in the docs, the compile arguments the command amounts to)
COMMANDS = (
    ("Will it fit? (step 1)", ["--config", "llama-1b", "--topology", "v5p-8", "train.batch_size=64", "model.remat=full"]),
    ("step 2: launch on v5e-8", ["--config", "llama-1b", "--topology", "v5e-8", "mesh.data=1", "mesh.fsdp=-1",
                                 "train.steps=20000"]),
    ("step 3: run on v5p-8", ["--config", "llama-1b", "--topology", "v5p-8"]),
    ("step 5: multislice, 2 x v5p-64", ["--config", "llama-1b", "--topology", "v5p-64", "--num-slices", "2",
                                        "mesh.dcn=2"]),
)


def compile_row(label: str, args: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([*JAXTRAIN, "compile", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    hbm = re.search(r"HBM per chip\s+(.*)", proc.stdout)
    return {"label": label, "command": "jaxtrain compile " + " ".join(args), "rc": proc.returncode,
            "hbm": hbm.group(1) if hbm else proc.stderr.strip().splitlines()[-1:],
            "seconds": round(time.perf_counter() - start)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "walkthrough_fit.md"))
    p.add_argument("--parts", nargs="+", choices=["commands", "plan"], default=["commands", "plan"])
    a = p.parse_args(argv)
    rows = [compile_row(label, args) for label, args in COMMANDS] if "commands" in a.parts else []
    plan_s, plan_text, planned_yaml, rc = 0, "(not run: --parts)", "", None
    if "plan" in a.parts:
        plan_s, plan_text, planned_yaml, rc = plan_and_compile(rows)
    lines = [f"<!-- python benchmarks/walkthrough_fit.py --parts {' '.join(a.parts)}; {platform.platform()}, "
             f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')} -->", "",
             "| docs | command | HBM per chip | fits (rc 0) | compile s |", "|---|---|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | `{r['command']}` | {r['hbm']} | {'yes' if r['rc'] == 0 else 'NO'} "
                     f"| {r['seconds']} |")
    lines += ["", f"`jaxtrain plan --flops 1e21 --topology v5p-8` ({plan_s} s, rc {rc}):", "", "```",
              plan_text.strip(), "```", "", "```yaml", planned_yaml.strip(), "```", ""]
    pathlib.Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return rows


def plan_and_compile(rows: list[dict]) -> tuple[int, str, str, int]:
    """`jaxtrain plan --flops 1e21 --topology v5p-8`, then a compile row for the config it wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        planned = pathlib.Path(tmp) / "plan-v5p-8.yaml"
        start = time.perf_counter()
        proc = subprocess.run([*JAXTRAIN, "plan", "--flops", "1e21", "--topology", "v5p-8", "--out", str(planned)],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        plan_s = round(time.perf_counter() - start)
        plan_text = proc.stdout if proc.returncode in (0, 3) else proc.stdout + proc.stderr[-2000:]
        rows.append(compile_row("the plan for 1e21 FLOPs on v5p-8", ["--config", str(planned), "--topology", "v5p-8"]))
        rows[-1]["command"] = "jaxtrain compile --config plan-v5p-8.yaml --topology v5p-8"
        planned_yaml = planned.read_text() if planned.exists() else ""
    return plan_s, plan_text, planned_yaml, proc.returncode


if __name__ == "__main__":
    main()
