import pytest
import yaml

from jaxtrain.config import ConfigError, load_config, load_run_config, save_config


def test_presets_load_and_overrides_apply():
    for name in ("demo", "tiny", "llama-1b"):
        load_config(name)
    cfg = load_config("tiny", ["model.num_layers=4", "optimizer.learning_rate=1e-4", "train.z_loss=0.0001"])
    assert cfg.model.num_layers == 4 and cfg.optimizer.learning_rate == 1e-4 and cfg.train.z_loss == 1e-4


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("model.num_layer=4", r"model\.num_layer: unknown key\. Did you mean model\.num_layers\?"),
        ("modle.num_layers=4", r"modle: unknown key\. Did you mean model\?"),
        ("model.num_layers=four", r"model\.num_layers: expected an integer, got 'four'"),
        ("train.steps=1.5", r"train\.steps: expected an integer"),
        ("model.norm=batchnorm", r"model\.norm: 'batchnorm' is not allowed; choose one of \['rmsnorm', 'layernorm'\]"),
        ("model.num_kv_heads=3", r"model\.num_kv_heads: 3 must divide model\.num_heads=4"),
        ("mesh.tensor=3", r"mesh\.tensor: 3 must divide model\.num_heads=4"),
        ("model.vocab_size=510", r"tokenizer\.vocab_size: 512 differs"),
        ("data.seq_len=128", r"data\.seq_len: 128 exceeds model\.max_seq_len=64"),
        ("tokenizer.vocab_size=1000", r"tokenizer\.vocab_size: 1000 differs from model\.vocab_size=512"),
        ("train.batch_size", r"expected key=value"),
    ],
)
def test_bad_config_names_the_key_and_fix(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("tiny", [override])


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such preset; available: .*demo.*tiny"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.name: 'web' is not an embedded source"):
        load_config("tiny", ["data.sources=[{name: web}]"])


def test_a_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny\ntrain:\n  steps: [1, 2\n  batch_size: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    assert str(e.value) == (f"{bad}: not valid YAML at line 4, column 13: expected ',' or ']', but got ':' "
                            "(while parsing a flow sequence that starts at line 3, column 10); fix the syntax there.")


def test_a_key_given_twice_is_refused_not_silently_the_last(tmp_path):
    """A new user's trial: num_layers: 2 then num_layers: 3 trained a 3-layer model without a word."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("base: tiny\nmodel:\n  num_layers: 2\n  num_layers: 3\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: not valid YAML at line 4, column 3: key 'num_layers' appears "
                                          r"twice in one mapping \(first at line 3\)"):
        load_config(str(dup))


def test_resolved_config_round_trips_through_the_run_dir(tmp_path):
    cfg = load_config("tiny", ["model.num_layers=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["num_layers"] == 3
    assert load_run_config(tmp_path) == cfg


def test_preset_inheritance(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: tiny\nmodel: {num_layers: 5}\n")
    cfg = load_config(str(child))
    assert cfg.model.num_layers == 5 and cfg.model.embed_dim == load_config("tiny").model.embed_dim


def test_bfloat16_master_weights_are_refused_before_any_work():
    """It used to crash training with a raw TypeError (optimizer state compiled as bfloat16, called with float32)."""
    with pytest.raises(ConfigError, match=r"model.param_dtype: bfloat16 master weights are not supported for training.*"
                                          r"model.dtype=bfloat16"):
        load_config("tiny", ["model.param_dtype=bfloat16"])
    assert load_config("tiny", ["model.dtype=bfloat16"]).model.dtype == "bfloat16"
