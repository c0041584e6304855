import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain.models import ModelConfig, Transformer, count_params
from jaxtrain.models.attention import attention_mask

CFG = ModelConfig(vocab_size=97, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, mlp_dim=64, max_seq_len=16)


@pytest.mark.parametrize(
    "cfg",
    [
        CFG,
        ModelConfig(vocab_size=97, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=4, mlp_dim=64, max_seq_len=16,
                    pos_embedding="learned", norm="layernorm", mlp="gelu", tie_embeddings=True),
        ModelConfig(vocab_size=97, num_layers=1, embed_dim=32, num_heads=4, num_kv_heads=1, mlp_dim=64, max_seq_len=16,
                    qk_norm=True),
    ],
    ids=["llama-gqa", "gpt2-style", "mqa-qknorm"],
)
def test_output_shape_dtype_and_causality(cfg):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    logits = model(tokens)
    assert logits.shape == (2, 16, cfg.vocab_size)
    assert logits.dtype == jnp.float32

    # Gradient check: output at position t must not depend on inputs after t.
    graphdef, params = nnx.split(model)
    embeds = jnp.take(model.embed_VxD[...], tokens, axis=0)
    t = 7

    def out_t(emb):
        return _forward_from_embeddings(nnx.merge(graphdef, params), emb)[:, t].sum()

    grad = jax.grad(out_t)(embeds)
    per_position = jnp.abs(grad).sum(axis=(0, 2))
    assert float(per_position[: t + 1].sum()) > 0
    np.testing.assert_array_equal(np.asarray(per_position[t + 1 :]), 0.0)


def _forward_from_embeddings(model: Transformer, x_BxLxD):
    B, L, _ = x_BxLxD.shape
    positions = jnp.broadcast_to(jnp.arange(L), (B, L))
    segments = jnp.ones((B, L), jnp.int32)
    if model.pos_embed_LxD is not None:
        x_BxLxD = x_BxLxD + model.pos_embed_LxD[...][positions]
    return model.final_norm(model.apply_blocks(x_BxLxD, positions, segments))


def test_packed_documents_do_not_see_each_other():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (1, 16), 0, CFG.vocab_size)
    segments = jnp.asarray([[1] * 6 + [2] * 10])
    positions = jnp.asarray([list(range(6)) + list(range(10))])
    base = model(tokens, positions, segments)
    changed = tokens.at[0, :6].set((tokens[0, :6] + 5) % CFG.vocab_size)  # rewrite document 1
    out = model(changed, positions, segments)
    np.testing.assert_allclose(np.asarray(out[0, 6:]), np.asarray(base[0, 6:]), atol=1e-6)
    assert not np.allclose(np.asarray(out[0, :6]), np.asarray(base[0, :6]))


def test_attention_mask_is_causal_and_per_segment():
    mask = np.asarray(attention_mask(jnp.asarray([[1, 1, 2, 2, 0]])))[0]
    expected = np.array(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], dtype=bool
    )
    np.testing.assert_array_equal(mask, expected)


def test_count_params_matches_formula():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    D, F, V, K = 32, 64, 97, 8
    per_layer = D * 4 * K + 2 * D * 2 * K + 4 * K * D + 3 * D * F + 2 * D
    assert count_params(model) == V * D + 2 * per_layer + D + D * V
    assert count_params(model, exclude_embeddings=True) == 2 * per_layer + D + D * V
