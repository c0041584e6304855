"""Hugging Face handoff: transformers loads the export and computes the same logits; import round-trips."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtrain.config import load_run_config
from jaxtrain.export import hf
from jaxtrain.export.handoff import export_run, import_hf, load_hf_dir
from jaxtrain.models import ModelConfig, Transformer
from jaxtrain import pipeline
from jaxtrain.train.trainer import build_trainer, load_params

from conftest import tiny_config

torch = pytest.importorskip("torch", reason="CPU PyTorch is needed to check the export with transformers")
transformers = pytest.importorskip("transformers")

TOKENS = np.array([[1, 17, 250, 3, 99, 402, 7, 7, 64, 300, 2, 45]], dtype=np.int32)


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


def test_llama_run_exports_to_llamaforcausallm_with_matching_logits_and_card(fresh_run, tmp_path):
    cfg = tiny_config("train.steps=2", "checkpoint.every_steps=2", "eval.every_steps=2")
    pipeline.train(cfg, fresh_run)
    out = export_run(load_run_config(fresh_run), fresh_run, tmp_path / "hf")
    model = transformers.LlamaForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    _, params, _ = load_params(cfg, fresh_run)
    jax_model = nnx.merge(build_trainer(cfg, fresh_run).spec.graphdef, jax.device_get(params))
    np.testing.assert_allclose(_hf_logits(model, TOKENS), np.asarray(jax_model(TOKENS)), atol=1e-4, rtol=1e-4)

    card = (out / "README.md").read_text()
    prov = json.loads((out / "provenance.json").read_text())
    assert "stdlib_code" in card and "PSF-2.0" in card and prov["tokenizer_fingerprint"] in card
    assert prov["step"] == 2 and prov["tokens_seen"] == 2 * 8 * 64 and prov["eval"]["eval/loss"] > 0
    src = {s["name"]: s for s in prov["sources"]}["stdlib_code"]
    assert src["documents"]["kept"] > 0 and src["tokens"]["train"] > 0 and len(src["cleaned_sha256"]) == 64

    # And back: import the export as a new run; parameters are the same numbers.
    run2 = tmp_path / "imported"
    cfg2 = import_hf(out, tiny_config(), run2)
    _, params2, step = load_params(cfg2, run2)
    assert step == 0 and cfg2.model.num_layers == cfg.model.num_layers
    for a, b in zip(jax.tree.leaves(jax.device_get(params)), jax.tree.leaves(jax.device_get(params2)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # Exporting again replaces the export whole: a stale tokenizer.json of an earlier export (which transformers
    # would load instead of the run's tokenizer.model) does not survive. A directory that is not an export is
    # refused, untouched.
    (out / "tokenizer.json").write_text("{}")
    assert export_run(load_run_config(fresh_run), fresh_run, out) == out
    assert not (out / "tokenizer.json").exists() and (out / "model.safetensors").exists()
    assert not list(tmp_path.glob(".hf.*"))  # nothing left aside
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(hf.ExportError, match=r"exists and is not a jaxtrain export .*nothing was written"):
        export_run(load_run_config(fresh_run), fresh_run, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_gpt2_style_weights_load_into_gpt2lmheadmodel_with_matching_logits(tmp_path):
    from safetensors.numpy import save_file

    cfg = ModelConfig(vocab_size=512, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=4, mlp_dim=256,
                      max_seq_len=32, pos_embedding="learned", norm="layernorm", norm_eps=1e-5, mlp="gelu",
                      use_bias=True, tie_embeddings=True)
    model = Transformer(cfg, rngs=nnx.Rngs(3))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params = jax.tree.map(lambda x: x + 0.01 * np.random.default_rng(0).standard_normal(x.shape), params)  # non-zero biases
    nnx.update(model, params)
    tensors = hf.to_hf_tensors(cfg, params)
    (tmp_path / "config.json").write_text(json.dumps(hf.hf_config(cfg, bos_id=1, eos_id=2)))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    gpt2 = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path), torch_dtype=torch.float32).eval()
    np.testing.assert_allclose(_hf_logits(gpt2, TOKENS), np.asarray(model(TOKENS)), atol=1e-4, rtol=1e-4)


def test_unsupported_architectures_and_inputs_are_refused(tmp_path):
    with pytest.raises(hf.ExportError, match="qk_norm"):
        hf.architecture(ModelConfig(qk_norm=True))
    with pytest.raises(hf.ExportError, match="GPT-2 export needs"):
        hf.architecture(ModelConfig(pos_embedding="learned", norm="layernorm", mlp="gelu"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no pickle"):
        load_hf_dir(tmp_path)
