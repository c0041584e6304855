"""Llama 3.x continued pretraining end to end: import-hf, train, export, and transformers reads it back.

The Hugging Face directory is written by transformers itself: a random-weight Llama-3.2-shaped model
(tied embeddings, grouped-query attention, explicit head_dim, llama3 RoPE scaling with factor 32, rope
theta 500,000) and a byte-level BPE tokenizer.json trained by `tokenizers` on the embedded corpus with
Llama 3's pre-tokenizer, whose BOS/EOS are the last ids of the vocabulary (as in Llama 3).
"""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtrain import cli
from jaxtrain.config import load_run_config
from jaxtrain.data import shards
from jaxtrain.data import tokenizer as tok
from jaxtrain.rundir import RunDir
from jaxtrain.train.trainer import build_trainer, load_params

torch = pytest.importorskip("torch", reason="CPU PyTorch runs the reference model")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
STRINGS = ["hello world", " leading space", "def f(x):\n    return x ** 2\n", "naïve café 漢字 🙂",
           f"{BOS}special{EOS} tokens", "x = [1, 2, 3]", "\n\nnew paragraph", "don't stop ."]


def _llama3_tokenizer(prepared_run, out_dir):
    from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers

    texts = [json.loads(line)["text"] for p in sorted(RunDir(prepared_run).clean.glob("*.train.jsonl"))
             for line in p.read_text().splitlines()]
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=700, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.add_special_tokens([BOS, EOS])
    bpe.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bpe.token_to_id(BOS))])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS)
    fast.save_pretrained(str(out_dir))
    return fast


def _logits(model, tokens, positions):
    with torch.no_grad():
        return model(torch.from_numpy(tokens), position_ids=torch.from_numpy(positions)).logits.numpy()


def test_import_train_export_round_trip_of_a_llama3_directory(prepared_run, tmp_path, capsys):
    hf_dir = tmp_path / "llama3"
    fast = _llama3_tokenizer(prepared_run, hf_dir)
    vocab = len(fast)
    bos, eos = fast.convert_tokens_to_ids(BOS), fast.convert_tokens_to_ids(EOS)
    assert (bos, eos) == (vocab - 2, vocab - 1)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos)
    torch.manual_seed(0)
    original = transformers.LlamaForCausalLM(config).eval()
    original.save_pretrained(str(hf_dir))

    run = tmp_path / "run"
    assert cli.main(["import-hf", str(hf_dir), "--run-dir", str(run), "--config", "tiny"]) == 0
    cfg = load_run_config(run)
    assert (cfg.model.rope_scaling, cfg.model.rope_factor, cfg.model.rope_original_max_len) == ("llama3", 32.0, 8192)
    assert RunDir(run).tokenizer.name == "tokenizer.json"
    ours = tok.load(RunDir(run).tokenizer)
    assert (ours.bos_id, ours.eos_id) == (bos, eos)

    # Step 0 is the Hugging Face model, including far past 8,192 positions.
    tokens = np.asarray([[bos, *ours.encode("def main():\n    print('hello')\n")[:30]]])
    positions = np.arange(9000, 9000 + tokens.shape[1])[None]
    trainer, params0, step = load_params(cfg, run)
    model0 = nnx.merge(trainer.spec.graphdef, jax.device_get(params0))
    np.testing.assert_allclose(np.asarray(model0(tokens.astype(np.int32), positions.astype(np.int32))),
                               _logits(original, tokens, positions), atol=1e-4, rtol=1e-4)

    # A few steps of continued pretraining on the embedded corpus, tokenized with the tokenizer.json.
    shutil.copytree(RunDir(prepared_run).clean, RunDir(run).clean)
    assert cli.main(["train", "--run-dir", str(run), "train.steps=3", "checkpoint.every_steps=3",
                     "eval.every_steps=3", "optimizer.warmup_steps=1"]) == 0
    first = np.asarray(shards.data_source(run, "train", "stdlib_code")[0]["tokens"])
    assert (first[0], first[-1]) == (bos, eos)

    # Export back; transformers reads model and tokenizer, and its logits are jaxtrain's.
    out = tmp_path / "export"
    assert cli.main(["export", str(run), str(out)]) == 0
    capsys.readouterr()
    exported = transformers.LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert exported.config.rope_parameters["rope_type"] == "llama3"
    assert (exported.config.bos_token_id, exported.config.eos_token_id) == (bos, eos)
    trainer, params, step = load_params(load_run_config(run), run)
    assert step == 3
    model = nnx.merge(build_trainer(load_run_config(run), run).spec.graphdef, jax.device_get(params))
    for start in (0, 9000, 60000):
        positions = np.arange(start, start + tokens.shape[1])[None]
        theirs = _logits(exported, tokens, positions)
        np.testing.assert_allclose(np.asarray(model(tokens.astype(np.int32), positions.astype(np.int32))), theirs,
                                   atol=1e-4, rtol=1e-4)
    assert np.abs(theirs - _logits(original, tokens, positions)).max() > 1e-3  # it did train

    # The model card names the foundation, and the Hub's parser reads its metadata (#22).
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md", ignore_metadata_errors=False)
    assert "Continued pretraining of" in card.text and str(hf_dir.resolve()) in card.text
    assert card.data.to_dict()["pipeline_tag"] == "text-generation"
    data_card = json.loads((out / "data_card.json").read_text())
    assert data_card["base_model"]["weights_sha256"] and [c["step"] for c in data_card["chain"]["checkpoints"]] == [0, 3]
    assert sum(s["tokens_trained"] for s in data_card["sources"]) > 0

    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in STRINGS:
        ids = ours.encode(text)
        assert auto.encode(text) == [bos, *ids], text
        assert auto.decode(ids) == ours.decode(ids), text

    # lm-eval: its own HF model on the export and jaxtrain's adapter on the run score alike (tokenizer.json path).
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from jaxtrain.evaluate.lm_eval_adapter import JaxtrainLM

    pairs = [("x = ", "[1, 2, 3]"), ("def f(x):\n    return", " x"), ("", "naïve café")]
    requests = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    expected = HFLM(pretrained=str(out), device="cpu", dtype="float32", batch_size=2).loglikelihood(requests)
    got = JaxtrainLM(str(run), batch_size=2).loglikelihood(requests)
    for (a, greedy_a), (b, greedy_b) in zip(expected, got):
        assert b == pytest.approx(a, abs=1e-4) and greedy_a == greedy_b
