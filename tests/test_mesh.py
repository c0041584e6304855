"""Checks that need the device count run once, when the mesh is built (jaxtrain.parallel.mesh)."""

import jax
import pytest

from jaxtrain.config import ConfigError, load_config
from jaxtrain.train.trainer import build_mesh


def test_device_dependent_checks():
    cfg = load_config("tiny", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "train.batch_size=6"])
    with pytest.raises(ConfigError, match=r"train\.batch_size: 6 is not divisible by the data-parallel size 4"):
        build_mesh(cfg, jax.devices())
    with pytest.raises(ConfigError, match=r"needs 8 devices but 4 are available"):
        build_mesh(load_config("tiny", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]), jax.devices()[:4])
    build_mesh(load_config("tiny"), jax.devices())
