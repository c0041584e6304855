
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.models.attention import dot_product_attention, resolve


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


@pytest.mark.parametrize("impl", ["jax", "splash"])
@pytest.mark.parametrize("segments", list(SEGMENTS), ids=list(SEGMENTS))
def test_implementation_matches_reference(impl, segments):
    q, k, v = _qkv()
    seg = jnp.asarray(SEGMENTS[segments])
    interpret = impl == "splash"  # Pallas TPU kernel in interpret mode on CPU

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
