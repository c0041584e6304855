import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain.evaluate.sampling import filter_logits, generate
from jaxtrain.models import ModelConfig, Transformer


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_cached_decoding_matches_full_forward_for_a_padded_batch(pos):
    cfg = ModelConfig(vocab_size=61, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, mlp_dim=64,
                      max_seq_len=32, pos_embedding=pos)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    prompts = [[1, 5, 9, 13, 17, 21], [1, 7, 3]]  # different lengths: the second is left-padded
    new, logits = generate(graphdef, params, prompts, max_new_tokens=6, temperature=0.0, return_logits=True)
    for row, (prompt, tokens) in enumerate(zip(prompts, new)):
        full = np.asarray(model(jnp.asarray([prompt + tokens])))[0]
        for t in range(len(tokens)):
            # The logits that chose token t are the full model's at the position before it.
            np.testing.assert_allclose(logits[row, t], full[len(prompt) - 1 + t], atol=1e-4, rtol=1e-4)
        assert tokens == [int(np.argmax(full[len(prompt) - 1 + t])) for t in range(len(tokens))]


def test_top_k_and_top_p_filtering():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, 1.0, 2, 1.0)) == [True, True, False, False]
    assert kept(filter_logits(logits, 1.0, 0, 0.7)) == [True, True, False, False]  # 0.5 < 0.7 <= 0.8
    assert kept(filter_logits(logits, 1.0, 0, 0.5)) == [True, False, False, False]
    assert kept(filter_logits(logits, 1.0, 0, 0.9)) == [True, True, True, False]


def test_sampling_is_seeded_and_stops_at_eos():
    cfg = ModelConfig(vocab_size=17, num_layers=1, embed_dim=16, num_heads=2, num_kv_heads=2, mlp_dim=32, max_seq_len=64)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(1)))
    a = generate(graphdef, params, [[1, 2, 3]] * 3, max_new_tokens=20, temperature=1.0, seed=3)
    b = generate(graphdef, params, [[1, 2, 3]] * 3, max_new_tokens=20, temperature=1.0, seed=3)
    assert a == b and len({tuple(r) for r in a}) > 1  # same seed, same draws; rows differ from each other
    cut = generate(graphdef, params, [[1, 2, 3]], max_new_tokens=20, temperature=1.0, seed=3, eos_id=a[0][5])
    assert cut[0] == a[0][: a[0].index(a[0][5])]
