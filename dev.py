#!/usr/bin/env python3
"""Bootstrap for a fresh machine: make .venv, install the pinned requirements, run.

    python3 dev.py demo [key=value ...]   the main job: whole pipeline on the embedded corpus and an offline web crawl,
                                          CPU, 8-device simulated mesh
    python3 dev.py test [pytest args]     the test suite

Only the standard library is used here, so it runs before anything is installed.
`demo` installs requirements.txt; `test` adds requirements-test.txt (libtpu for the
AOT test, CPU PyTorch + transformers for the export test, lm-eval, nbclient).
Installs are redone only when those files or pyproject.toml change.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import venv

ROOT = pathlib.Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
def ensure_env(requirements: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"jaxtrain needs Python 3.11+, this is {sys.version.split()[0]}")
    python = BIN / "python"
    if not python.exists():
        print(f"[dev] creating virtual environment {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    inputs = ("requirements.txt", requirements, "pyproject.toml")
    digest = hashlib.sha256(b"".join((ROOT / name).read_bytes() for name in inputs)).hexdigest()
    stamp = VENV / f".jaxtrain-installed-{requirements}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"[dev] installing pinned {requirements} (first run only)", flush=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "-r", str(ROOT / requirements)], check=True)
    subprocess.run([*pip, "install", "--no-deps", "-e", str(ROOT)], check=True)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    ensure_env("requirements.txt" if argv[0] == "demo" else "requirements-test.txt")
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    env.setdefault("JAX_PLATFORMS", "cpu")
    if argv[0] == "demo":
        os.chdir(ROOT)
        # The demo's web source: a crawl built offline from pydoc's HTML (reused when already built).
        subprocess.run([str(BIN / "python"), "-m", "jaxtrain.data.sample_crawl", "runs/demo-crawl"], env=env, check=True)
        cmd = [str(BIN / "jaxtrain"), "run", "--config", "demo", *argv[1:]]
    else:
        cmd = [str(BIN / "python"), "-m", "pytest", "-q", *argv[1:]]
    os.chdir(ROOT)
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
