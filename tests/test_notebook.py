"""notebooks/quickstart.ipynb runs headless against a real (tiny) run directory."""

import pathlib

import pytest

from jaxtrain import pipeline

from conftest import tiny_config

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(fresh_run, monkeypatch):
    pipeline.train(tiny_config("train.steps=4", "checkpoint.every_steps=4", "eval.every_steps=2"), fresh_run)
    monkeypatch.setenv("JAXTRAIN_RUN_DIR", str(fresh_run))
    monkeypatch.setenv("XLA_FLAGS", "")  # the kernel gets one CPU device, like a laptop notebook
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "parameters" in text and "restored step 4" in text and "def " in text and "The " in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))  # the loss plot
