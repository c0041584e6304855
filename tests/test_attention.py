"""Attention kernels against the XLA reference: Pallas kernels in interpret mode on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.config import ConfigError, load_config
from jaxtrain.models import flash_gpu, splash_tpu
from jaxtrain.models.attention import check_seq_len, dot_product_attention, resolve
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel.constraints import activation_sharding


def _qkv(B=2, L=128, H=4, G=2, K=32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (B, L, H, K), jnp.float32)
    k = jax.random.normal(ks[1], (B, L, G, K), jnp.float32)
    v = jax.random.normal(ks[2], (B, L, G, K), jnp.float32)
    return q, k, v


SEGMENTS = {
    "one_doc": np.ones((2, 128), np.int32),
    "packed": np.array([[1] * 40 + [2] * 60 + [3] * 20 + [0] * 8, [1] * 128], np.int32),
}


@pytest.mark.parametrize("impl", ["jax", "splash", "flash"])
@pytest.mark.parametrize("segments", list(SEGMENTS), ids=list(SEGMENTS))
def test_implementation_matches_reference(impl, segments):
    q, k, v = _qkv()
    seg = jnp.asarray(SEGMENTS[segments])
    interpret = impl in ("splash", "flash")  # Pallas kernels in interpret mode on CPU

    def loss(fn_impl, q, k, v):
        out = dot_product_attention(q, k, v, seg, implementation=fn_impl, interpret=interpret)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

    (ref_loss, ref_out), ref_grads = jax.value_and_grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    (got_loss, got_out), got_grads = jax.value_and_grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    valid = np.asarray(seg) > 0  # padding rows may differ (fully masked softmax); never used by the loss
    np.testing.assert_allclose(np.asarray(got_out)[valid], np.asarray(ref_out)[valid], atol=2e-5, rtol=1e-5)
    if segments == "one_doc":
        np.testing.assert_allclose(float(got_loss), float(ref_loss), rtol=1e-5)
        for a, b in zip(got_grads, ref_grads):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5, rtol=1e-4)


def test_auto_picks_by_platform():
    assert resolve("auto", "tpu") == "splash"
    assert resolve("auto", "gpu") == "flash"
    assert resolve("auto", "cpu") == "xla"
    assert resolve("xla", "tpu") == "xla"


def _packed_segments(B: int, L: int, seed: int = 0) -> jnp.ndarray:
    """Rows of 3-4 documents of random lengths, each ending in padding (segment 0), as the loader packs them."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(B):
        cuts = np.sort(rng.choice(np.arange(8, L - 40), size=int(rng.integers(2, 4)), replace=False))
        ids = np.searchsorted(cuts, np.arange(L), side="right") + 1
        ids[L - int(rng.integers(1, 30)):] = 0
        rows.append(ids)
    return jnp.asarray(np.stack(rows).astype(np.int32))


def _compare_with_reference(impl, q, k, v, seg, mesh=None, atol=2e-5):
    """Forward outputs and gradients of q, k, v of a weighted sum against the xla reference, on every position."""
    weights = jnp.cos(jnp.arange(q.size, dtype=jnp.float32).reshape(q.shape))

    def loss(name, q, k, v):
        if mesh is None:
            out = dot_product_attention(q, k, v, seg, implementation=name, interpret=True)
        else:
            with activation_sharding(mesh, mesh_lib.RULES):
                out = dot_product_attention(q, k, v, seg, implementation=name, interpret=True)
        return jnp.sum(out * weights), out

    grad = lambda name: jax.jit(jax.value_and_grad(lambda *a: loss(name, *a), argnums=(0, 1, 2), has_aux=True))  # noqa: E731
    (_, want), want_grads = grad("xla")(q, k, v)
    (_, got), got_grads = grad(impl)(q, k, v)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=atol, rtol=1e-5)
    for name, a, b in zip("qkv", got_grads, want_grads):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5 * atol, rtol=1e-4, err_msg=f"d{name}")


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["gqa", "mqa"])
def test_flash_gpu_kernel_packed_rows_several_blocks(kv_heads):
    """L=256: 2 forward query tiles x 4 key tiles, 4 backward tiles; 3-4 documents and padding per row."""
    assert flash_gpu.tiles_for(256) == flash_gpu.Tiles(128, 64, 64)
    q, k, v = _qkv(B=2, L=256, H=4, G=kv_heads, K=32, seed=1)
    _compare_with_reference("flash", q, k, v, _packed_segments(2, 256))


def test_flash_gpu_kernel_per_shard_on_a_mesh():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
    q, k, v = _qkv(B=4, L=128, H=4, G=2, K=32, seed=2)
    _compare_with_reference("flash", q, k, v, _packed_segments(4, 128, seed=2), mesh=mesh)


def test_splash_long_sequence_several_blocks_packed_gqa():
    """L=1536: three 512-blocks in every kernel (forward, dq, dkv); 4 query heads on 2 key/value heads."""
    assert splash_tpu.block_size_for(1536) == 512
    q, k, v = _qkv(B=2, L=1536, H=4, G=2, K=64, seed=3)
    _compare_with_reference("splash", q, k, v, _packed_segments(2, 1536, seed=3))


def test_splash_heads_sharded_under_shard_map():
    """Heads split over the tensor axis with the kernel's mask metadata split to match (MaxText's layout)."""
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
    q, k, v = _qkv(B=4, L=1024, H=4, G=2, K=64, seed=4)
    _compare_with_reference("splash", q, k, v, _packed_segments(4, 1024, seed=4), mesh=mesh)


def _pallas_operand_shapes(fn, *args) -> list[list[tuple]]:
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pallas_call":
                found.append([tuple(v.aval.shape) for v in eqn.invars])
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_kernels_read_grouped_keys_without_copies_and_splash_is_built_once():
    q, k, v = _qkv(B=1, L=256, H=4, G=2, K=64)
    seg = jnp.ones((1, 256), jnp.int32)
    splash_tpu.kernel_for.cache_clear()

    def two_layers(q, k, v, seg):
        out = splash_tpu.splash_attention(q, k, v, seg, interpret=True)
        return splash_tpu.splash_attention(out, k, v, seg, interpret=True)

    calls = _pallas_operand_shapes(two_layers, q, k, v, seg)
    assert len(calls) == 2 and all((2, 256, 64) in c and (4, 256, 64) in c for c in calls), calls
    assert splash_tpu.kernel_for.cache_info().misses == 1  # one kernel for both layers
    grads = jax.grad(lambda *a: flash_gpu.flash_attention(*a, interpret=True).sum(), argnums=(0, 1, 2))
    for shapes in _pallas_operand_shapes(grads, q, k, v, seg):
        assert shapes[1] == shapes[2] == (1, 256, 2, 64), shapes  # keys/values enter with G=2 heads


def test_sequence_lengths_the_kernels_cannot_tile_are_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"data.seq_len: 300 must be a multiple of 128 .*model.attention=xla"):
        check_seq_len("splash", 300)
    with pytest.raises(ConfigError, match=r"data.seq_len: 200 must be a multiple of 128"):
        check_seq_len("auto", 200, platform="tpu")
    with pytest.raises(ConfigError, match=r"data.seq_len: 100 must be a multiple of 16 .*model.attention=flash"):
        check_seq_len("auto", 100, platform="gpu")
    check_seq_len("auto", 100, platform="cpu")  # xla: any length
    check_seq_len("auto", 300)  # platform unknown at config load: checked when the mesh is built
    assert [splash_tpu.block_size_for(n) for n in (128, 384, 1024, 2048)] == [128, 128, 512, 512]
    assert flash_gpu.tiles_for(48) == flash_gpu.Tiles(16, 16, 16)
    with pytest.raises(ConfigError, match="data.seq_len: 200"):
        load_config("tiny", ["model.attention=splash", "data.seq_len=200", "model.max_seq_len=256"])
