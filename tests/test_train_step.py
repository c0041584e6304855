import dataclasses

import jax
import numpy as np
import pytest

from jaxtrain.models import ModelConfig
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.train import state as state_lib
from jaxtrain.train.optimizer import OptimizerConfig, make_optimizer
from jaxtrain.train.loss import make_loss_fn
from jaxtrain.train.step import make_train_step

CFG = ModelConfig(vocab_size=128, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, mlp_dim=64, max_seq_len=32)


def _batch(seed: int = 0, B: int = 8, L: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, CFG.vocab_size, size=(B, L + 1)).astype(np.int32)
    segments = np.ones((B, L), np.int32)
    segments[:, L // 2 :] = 2  # two packed documents per row
    positions = np.concatenate([np.arange(L // 2), np.arange(L - L // 2)])[None].repeat(B, 0).astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segments,
            "positions": positions, "loss_mask": np.ones((B, L), np.float32)}


def _setup(mesh_shape: dict, devices, lr: float = 1e-2, cfg: ModelConfig = CFG, microbatches: int = 1):
    mesh = mesh_lib.make_mesh(mesh_shape, devices)
    spec = state_lib.model_spec(cfg)
    tx = make_optimizer(OptimizerConfig(learning_rate=lr, warmup_steps=0), 100)
    shardings = state_lib.state_shardings(spec, tx, mesh)
    state = state_lib.init_state(cfg, tx, shardings, seed=0)
    step = jax.jit(
        make_train_step(make_loss_fn(spec.graphdef, mesh, mesh_lib.RULES), tx, microbatches=microbatches),
        in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
        donate_argnums=0,
    )
    return state, step, mesh


def test_loss_drops_on_a_fixed_batch():
    state, step, _ = _setup({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices())
    batch = _batch()
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    "shape",
    [
        # data, fsdp and tensor alone are also proven across processes by tests/test_pod.py
        pytest.param({"data": 8, "fsdp": 1, "tensor": 1}, marks=pytest.mark.slow),
        pytest.param({"data": 1, "fsdp": 8, "tensor": 1}, marks=pytest.mark.slow),
        {"data": 1, "fsdp": 4, "tensor": 2},
        pytest.param({"data": 2, "fsdp": 2, "tensor": 2}, marks=pytest.mark.slow),
        {"dcn": 2, "data": 1, "fsdp": 2, "tensor": 2},
    ],
    ids=["data8", "fsdp8", "fsdp4xtensor2", "2x2x2", "multislice2x(fsdp2xtensor2)"],
)
def test_sharded_step_matches_single_device(shape):
    _assert_same_training({"data": 1}, jax.devices()[:1], {}, shape, jax.devices(), {})


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param({"cfg": dataclasses.replace(CFG, scan_layers=False)}, marks=pytest.mark.slow),
        {"cfg": dataclasses.replace(CFG, remat="full")},
        pytest.param({"cfg": dataclasses.replace(CFG, remat="save_dots", scan_layers=False)}, marks=pytest.mark.slow),
        {"microbatches": 2},
    ],
    ids=["unrolled", "remat-full", "remat-save_dots-unrolled", "grad-accum-2"],
)
def test_execution_choices_change_nothing_numerically(variant):
    mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    _assert_same_training(mesh, jax.devices(), {}, mesh, jax.devices(), variant)


def _assert_same_training(ref_mesh, ref_devices, ref_kw, mesh_shape, devices, kw):
    batch = _batch(1)
    ref_state, ref_step, _ = _setup(ref_mesh, ref_devices, **ref_kw)
    state, step, mesh = _setup(mesh_shape, devices, **kw)
    assert len(mesh.devices.flat) == len(devices)
    for _ in range(3):
        ref_state, ref_metrics = ref_step(ref_state, batch)
        state, metrics = step(state, batch)
        np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-5)
        np.testing.assert_allclose(float(metrics["grad_norm"]), float(ref_metrics["grad_norm"]), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5)


def test_parameters_are_actually_sharded():
    state, _, _ = _setup({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
    w = state.params["blocks"]["mlp"]["w_in_DxF"]
    assert w.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert w.addressable_shards[0].data.shape == (CFG.num_layers, CFG.embed_dim // 2, CFG.mlp_dim // 2)
    mu = state.opt_state[1][0].mu["blocks"]["mlp"]["w_in_DxF"]
    assert mu.sharding.spec == w.sharding.spec


def test_mesh_mismatch_is_a_clear_error():
    with pytest.raises(mesh_lib.MeshError, match="needs 12 devices but 8"):
        mesh_lib.make_mesh({"data": 3, "fsdp": 2, "tensor": 2})
    assert dict(mesh_lib.make_mesh({"data": -1, "fsdp": 2, "tensor": 2}).shape) == {"dcn": 1, "data": 2, "fsdp": 2, "tensor": 2}
