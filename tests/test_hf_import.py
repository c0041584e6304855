"""Import that is exact or refuses: every Llama config.json field is honoured or refused by name.

RoPE scaling is checked against transformers' own LlamaForCausalLM at positions far beyond the 8,192
that Llama 3 was first trained at; attention is made sharp (large initial weights) so that the
position encoding decides the logits.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtrain import cli
from jaxtrain.export import hf
from jaxtrain.models import ModelConfig, Transformer

torch = pytest.importorskip("torch", reason="CPU PyTorch runs the reference model")
transformers = pytest.importorskip("transformers")

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}


def _hf_model(rope_scaling, **kw):
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True, rope_scaling=rope_scaling, initializer_range=0.2, **kw)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _logits_both(model, config_json: dict, starts=(0, 8192, 9000, 20000, 100000)):
    cfg = hf.model_config_from_hf(config_json)
    params = hf.from_hf_tensors(cfg, {k: v.detach().numpy() for k, v in model.state_dict().items()})
    ours = Transformer(cfg, rngs=nnx.Rngs(0))
    nnx.update(ours, params)
    tokens = np.random.default_rng(0).integers(0, 97, size=(2, 40))
    out = []
    for start in starts:
        positions = np.broadcast_to(np.arange(start, start + 40), tokens.shape)
        with torch.no_grad():
            ref = model(torch.from_numpy(tokens), position_ids=torch.from_numpy(positions.copy())).logits.numpy()
        out.append((ref, np.asarray(ours(tokens.astype(np.int32), positions.astype(np.int32))), cfg, ours, params))
    return out


def test_llama3_rope_matches_transformers_beyond_8192_positions():
    model = _hf_model(LLAMA3_ROPE)
    results = _logits_both(model, model.config.to_dict())
    assert results[0][2].rope_scaling == "llama3" and results[0][2].rope_factor == 32.0
    for ref, got, *_ in results:
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    # The same weights with plain RoPE are far off: the comparison sees the scaling.
    ref, _, cfg, ours, params = results[2]
    plain = Transformer(dataclasses.replace(cfg, rope_scaling="none"), rngs=nnx.Rngs(0))
    nnx.update(plain, params)
    tokens = np.random.default_rng(0).integers(0, 97, size=(2, 40)).astype(np.int32)
    positions = np.broadcast_to(np.arange(9000, 9040, dtype=np.int32), tokens.shape)
    assert np.abs(np.asarray(plain(tokens, positions)) - ref).max() > 1e-2


@pytest.mark.parametrize("spelling", ["type", "rope_type"])
def test_linear_rope_in_the_older_rope_scaling_spelling_is_exact(spelling):
    """{"type": "linear", "factor": 4} used to import as plain RoPE (issue 15)."""
    model = _hf_model({spelling: "linear", "factor": 4.0})
    config = model.config.to_dict()
    config.pop("rope_parameters")
    config.update(rope_scaling={spelling: "linear", "factor": 4.0}, rope_theta=500000.0)
    results = _logits_both(model, config, starts=(0, 20000))
    assert results[0][2].rope_scaling == "linear" and results[0][2].rope_factor == 4.0
    for ref, got, *_ in results:
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def _llama_json(**changes) -> dict:
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2).to_dict()
    config.update(changes)
    return config


@pytest.mark.parametrize("changes, named", [
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "dynamic"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "dynamic"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "yarn"),
    ({"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}}, "longrope"),
    ({"rope_scaling": {"type": "linear", "rope_type": "llama3", "factor": 2.0}}, "two RoPE types"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "attention_factor": 0.5}}, "attention_factor"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"attention_dropout": 0.1}, "attention_dropout"),
    ({"sliding_window": 4096}, "sliding_window"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ({"logits_scaling": 4.0}, "logits_scaling"),
    ({"model_type": "mistral"}, "model_type"),
])
def test_fields_that_change_the_computation_are_refused_by_name(changes, named):
    with pytest.raises(hf.ExportError, match=named):
        hf.model_config_from_hf(_llama_json(**changes))


def test_every_field_transformers_writes_is_handled_and_defaults_read_exactly():
    config = _llama_json(head_dim=24, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 123.0})
    assert set(config) <= hf.MAPPED | set(hf.MUST_BE) | hf.NO_EFFECT, set(config) - hf.MAPPED - hf.NO_EFFECT
    cfg = hf.model_config_from_hf(config)
    assert (cfg.head_dim, cfg.norm_eps, cfg.tie_embeddings, cfg.rope_theta, cfg.num_kv_heads) == (24, 1e-5, True, 123.0, 2)
    older = {k: v for k, v in config.items() if k != "rope_parameters"}  # transformers 4 files: top-level rope_theta
    assert hf.model_config_from_hf({**older, "rope_theta": 77.0}).rope_theta == 77.0
    # A user who knows an unknown field is harmless names it; otherwise it is refused.
    with pytest.raises(hf.ExportError, match="my_field"):
        hf.model_config_from_hf({**config, "my_field": 1})
    assert hf.model_config_from_hf({**config, "my_field": 1}, ignore_fields=("my_field",)) == cfg


def test_export_writes_the_rope_scaling_transformers_reads_back():
    cfg = ModelConfig(vocab_size=97, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=96,
                      max_seq_len=131072, rope_theta=500000.0, rope_scaling="llama3", rope_factor=32.0)
    written = hf.hf_config(cfg, bos_id=5, eos_id=9)
    assert hf.model_config_from_hf(written) == cfg
    back = transformers.LlamaConfig.from_dict(written)
    assert back.rope_parameters["rope_type"] == "llama3" and back.rope_parameters["factor"] == 32.0
    assert (back.bos_token_id, back.eos_token_id) == (5, 9)


def test_tensors_must_be_exactly_those_the_config_implies():
    cfg = ModelConfig(vocab_size=97, num_layers=1, embed_dim=16, num_heads=2, num_kv_heads=2, mlp_dim=32)
    tensors = {k: np.zeros(s, np.float32) for k, s in hf.llama_tensor_shapes(cfg).items()}
    hf.from_hf_tensors(cfg, tensors)
    with pytest.raises(hf.ExportError, match="unexpected.*q_proj.bias"):
        hf.from_hf_tensors(cfg, {**tensors, "model.layers.0.self_attn.q_proj.bias": np.zeros(16, np.float32)})
    with pytest.raises(hf.ExportError, match="missing.*lm_head"):
        hf.from_hf_tensors(cfg, {k: v for k, v in tensors.items() if k != "lm_head.weight"})
    with pytest.raises(hf.ExportError, match="shape"):
        hf.from_hf_tensors(cfg, {**tensors, "model.norm.weight": np.zeros(17, np.float32)})


@pytest.mark.parametrize("tied", [False, True])
def test_export_and_import_read_one_table_and_invert_each_other(tied):
    """Grouped-query heads with head_dim * heads != width: every reshape and transposition is exercised."""
    cfg = ModelConfig(vocab_size=97, num_layers=2, embed_dim=48, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=80,
                      tie_embeddings=tied)
    params = nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    tensors = hf.to_hf_tensors(cfg, params)
    assert {k: v.shape for k, v in tensors.items()} == hf.llama_tensor_shapes(cfg)
    assert ("lm_head.weight" in tensors) is not tied
    q = np.asarray(params["blocks"]["attn"]["wq_DxHxK"][1])  # [D, H, K]: transformers' q_proj is [H * K, D]
    np.testing.assert_array_equal(tensors["model.layers.1.self_attn.q_proj.weight"][2 * 16 + 3], q[:, 2, 3])
    back = hf.from_hf_tensors(cfg, tensors)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, back)


def test_cli_prints_a_refused_import_as_one_line(tmp_path, capsys):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps(_llama_json(hidden_act="gelu")))
    (hf_dir / "model.safetensors").write_bytes(b"")
    assert cli.main(["import-hf", str(hf_dir), "--run-dir", str(tmp_path / "run"), "--config", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: config.json: hidden_act='gelu'")


def _weights_dir(tmp_path, files: dict) -> "pathlib.Path":
    from safetensors.numpy import save_file

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    for name, value in files.items():
        if name.endswith(".json"):
            (hf_dir / name).write_text(json.dumps(value))
        else:
            save_file({"w": np.full((2,), value, np.float32), "v": np.full((2,), value, np.float32)}, str(hf_dir / name))
    return hf_dir


def test_import_reads_exactly_the_files_transformers_reads(tmp_path):
    """A backup copy beside model.safetensors is never read (it used to win: logits off by 4.7)."""
    from jaxtrain.export import handoff

    hf_dir = _weights_dir(tmp_path, {"model.safetensors": 1.0, "model-backup.safetensors": 9.0})
    assert handoff.weight_files(hf_dir) == {"model.safetensors": None}
    np.testing.assert_array_equal(handoff.load_hf_tensors(hf_dir)["w"], [1.0, 1.0])


def test_a_sharded_directory_reads_each_tensor_from_the_file_its_index_names(tmp_path):
    from jaxtrain.export import handoff

    hf_dir = _weights_dir(tmp_path, {"model-00001-of-00002.safetensors": 1.0, "model-00002-of-00002.safetensors": 2.0,
                                     "old.safetensors": 9.0, "model.safetensors.index.json": {"weight_map": {
                                         "w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}})
    tensors = handoff.load_hf_tensors(hf_dir)
    assert tensors["w"].tolist() == [1.0, 1.0] and tensors["v"].tolist() == [2.0, 2.0]


@pytest.mark.parametrize("files, message", [
    ({"model.safetensors": 1.0, "model.safetensors.index.json": {"weight_map": {"w": "model.safetensors"}}},
     "holds both model.safetensors and model.safetensors.index.json"),
    ({"weights-backup.safetensors": 1.0}, r"no model.safetensors or model.safetensors.index.json, only \['weights-backup"),
    ({"model.safetensors.index.json": {"weight_map": {"w": "gone.safetensors"}}}, r"names \['gone.safetensors'\]"),
])
def test_ambiguous_or_incomplete_weight_files_are_refused(tmp_path, files, message):
    from jaxtrain.export import handoff

    with pytest.raises(hf.MissingFileError, match=message):
        handoff.load_hf_tensors(_weights_dir(tmp_path, files))


def _tiny_hf_dir(prepared_run, tmp_path):
    """A Hugging Face Llama directory of the tiny model, with the prepared run's tokenizer and a license."""
    import shutil

    from safetensors.numpy import save_file

    from conftest import tiny_config
    from jaxtrain.data import tokenizer as tok
    from jaxtrain.rundir import RunDir

    cfg = tiny_config()
    params = nnx.to_pure_dict(nnx.state(Transformer(cfg.model, rngs=nnx.Rngs(0)), nnx.Param))
    hf_dir = tmp_path / "base"
    hf_dir.mkdir()
    save_file(hf.to_hf_tensors(cfg.model, params), str(hf_dir / "model.safetensors"))
    sp = tok.load(RunDir(prepared_run).tokenizer)
    (hf_dir / "config.json").write_text(json.dumps(hf.hf_config(cfg.model, sp.bos_id, sp.eos_id)))
    shutil.copy(RunDir(prepared_run).tokenizer, hf_dir / "tokenizer.model")
    (hf_dir / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A base model\n")
    return hf_dir, cfg


def test_the_base_models_hub_id_and_card_metadata_reach_the_exported_card(prepared_run, tmp_path):
    """A Hub cache layout names the repository; the base's card metadata is kept; the card's YAML says base_model."""
    import shutil

    from jaxtrain.export import card, handoff

    hf_dir, _ = _tiny_hf_dir(prepared_run, tmp_path)
    cached = tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / "0123abc"
    shutil.copytree(hf_dir, cached)
    (cached / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en, de]\n---\n# base\n")
    record = handoff.base_model_record(cached)
    assert record["repo_id"] == "acme/tiny-llama" and record["card_metadata"]["language"] == ["en", "de"]
    assert handoff.base_model_record(hf_dir, repo_id="org/given")["repo_id"] == "org/given"
    meta = card.front_matter({"sources": [], "base_model": record})
    assert meta["base_model"] == "acme/tiny-llama" and meta["license"] == "apache-2.0"
    assert card.front_matter({"sources": [], "base_model": {**record, "license": "Proprietary: internal"}}
                             )["license_name"] == "proprietary-internal"


def test_an_imported_run_evaluates_before_training_and_refuses_another_tokenizer_before_any_work(
        prepared_run, tmp_path, capsys):
    """#22.4: `jaxtrain eval` on a model just imported prepares the run's data and scores its held-out split;
    a tokenizer override on it is refused before anything in the run directory changes."""
    from jaxtrain import pipeline, runconfig
    from jaxtrain.errors import ConfigError
    from jaxtrain.export import handoff
    from jaxtrain.rundir import RunDir

    hf_dir, cfg = _tiny_hf_dir(prepared_run, tmp_path)
    run = RunDir(tmp_path / "cont")
    imported = handoff.import_hf(hf_dir, cfg, run.root)
    results = pipeline.evaluate_checkpoint(imported, run)
    assert np.isfinite(results["eval/bpb"]) and "preparing the run's data first" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in run.evals.read_text().splitlines()] == [0]
    before = {p: p.read_bytes() for p in (run.config, run.tokenizer)}
    other = dataclasses.replace(imported, tokenizer=dataclasses.replace(
        imported.tokenizer, model_file=str(RunDir(prepared_run).tokenizer)))
    with pytest.raises(ConfigError, match=r"tokenizer.model_file: differ .* a model imported with its own tokenizer"):
        runconfig.given(other, run, data=True)
    assert {p: p.read_bytes() for p in (run.config, run.tokenizer)} == before


def test_an_imported_model_exports_before_training_names_its_foundation_and_refuses_a_second_import(
        prepared_run, tmp_path):
    """#22.2 and #22.4: the card of a continued-pretraining run names its base model (digest, license); an
    imported, untrained run exports; importing into a run that holds checkpoints is refused and changes nothing."""
    from jaxtrain.data import stages
    from jaxtrain.export import handoff

    hf_dir, cfg = _tiny_hf_dir(prepared_run, tmp_path)
    run = tmp_path / "cont"
    imported = handoff.import_hf(hf_dir, cfg, run)
    out = handoff.export_run(imported, run, tmp_path / "out")
    card = (out / "README.md").read_text()
    assert "Continued pretraining of" in card and "license: apache-2.0" in card and "nothing trained on yet" in card
    base = json.loads((out / "provenance.json").read_text())["base_model"]
    assert base["weights_sha256"] == stages.file_digest(hf_dir / "model.safetensors", length=64)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    with pytest.raises(hf.ExportError, match=r"already holds checkpoints; import into a new run directory"):
        handoff.import_hf(hf_dir, cfg, run)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
