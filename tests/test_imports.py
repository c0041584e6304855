import subprocess
import sys


def test_importing_models_has_no_side_effects(tmp_path):
    """Notebooks import the models: no backend init, no files written, no registrations."""
    code = (
        "import jaxtrain, jaxtrain.models, jaxtrain.config, jaxtrain.data.loader, jaxtrain.train.loop\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge._backends, 'a JAX backend was initialized at import'\n"
        "import os; assert os.listdir('.') == [], os.listdir('.')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_importing_the_curation_pipeline_is_quiet():
    """No apitools/bigquery notice on every command (issue #24): importing Beam through jaxtrain prints nothing."""
    out = subprocess.run([sys.executable, "-c", "import jaxtrain.data.curate"], capture_output=True, text=True,
                         check=True)
    assert "apitools" not in out.stderr + out.stdout, out.stderr
