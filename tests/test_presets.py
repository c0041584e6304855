"""Preset architectures match the published parameter counts exactly."""

import pytest
from flax import nnx

from jaxtrain.config import load_config
from jaxtrain.models import Transformer, count_params
from jaxtrain.scaling.flops import flops_per_token, matmul_params, mfu, peak_flops

PUBLISHED = {
    "gpt2-125m": 124_439_808,  # GPT-2 small (HF gpt2)
    "gpt2-350m": 354_823_168,  # GPT-2 medium (HF gpt2-medium)
    "llama-1b": 1_235_814_400,  # Llama-3.2-1B
    "llama2-7b": 6_738_415_616,  # Llama-2-7b-hf
    "llama3-8b": 8_030_261_248,  # Meta-Llama-3-8B
    "llama2-70b": 68_976_648_192,  # Llama-2-70b-hf
}


@pytest.mark.parametrize("preset", list(PUBLISHED))
def test_preset_parameter_count_is_the_published_one(preset):
    cfg = load_config(preset).model
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))  # no memory is allocated
    assert count_params(abstract) == PUBLISHED[preset]


def test_flops_formula_reproduces_maxtext_llama2_70b_mfu():
    """MaxText: Llama 2 70B on 512 v5p chips, 692 tokens/s/chip = 65.4% MFU (causal convention)."""
    cfg = load_config("llama2-70b").model
    fpt = flops_per_token(cfg, seq_len=4096, causal=True)
    got = mfu(fpt, tokens_per_s=692 * 512, n_chips=512, peak=peak_flops("TPU v5"))
    assert got == pytest.approx(0.654, abs=0.01)
    # PaLM's full-attention convention counts 12*L*H*Q*T without halving.
    assert flops_per_token(cfg, 4096, causal=False) - fpt == pytest.approx(6 * cfg.num_layers * 64 * 128 * 4096)


def test_matmul_params_counts_the_head_once():
    cfg = load_config("gpt2-125m").model
    # Everything but the position embeddings, norms and biases, with the tied head counted once.
    assert matmul_params(cfg) == 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 768 * 50257


def test_peaks_by_device_kind():
    assert peak_flops("TPU v5 lite") == 197e12 and peak_flops("TPU v6 lite") == 918e12
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("cpu") is None and mfu(1e9, 1e3, 1, None) is None
