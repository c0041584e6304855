"""Special-token ids come from the tokenizer, and the exported tokenizer is read exactly by transformers."""

import json
import re
import shutil

import numpy as np
import pytest
import sentencepiece as spm

from jaxtrain import cli, pipeline
from jaxtrain.data import shards
from jaxtrain.data import tokenizer as tok
from jaxtrain.evaluate import tasks
from jaxtrain.export.handoff import export_run, export_tokenizer
from jaxtrain.rundir import RunDir

from conftest import tiny_config

STRINGS = [
    "hello world", " leading space", "  two leading spaces", "\tindented\n    code", "trailing space ",
    "def f(x):\n    return {'a': x ** 2}  # comment\n", "naïve café ✓ 漢字 🙂 Ünïcödé", "don't stop . , !",
    "<|endoftext|>", "a<|code|>b <|endoftext|> c", "x = [1, 2, 3]", "\n\nnew paragraph", "many   inner   spaces", "",
    "literal <s> and </s> or <unk>", "html('<s>strike</s>')",  # control pieces' text is text (#22.6)
]


def _train_sp(prepared_run, prefix, vocab_size=512, **special_ids):
    lines = [ln for p in sorted(RunDir(prepared_run).clean.glob("*.train.jsonl"))
             for rec in map(json.loads, p.read_text().splitlines()) for ln in rec["text"].split("\n") if ln.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines[:20000]), model_prefix=str(prefix), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True, minloglevel=2, **special_ids)
    return prefix.with_suffix(".model")


def test_a_tokenizer_whose_bos_eos_are_not_1_2_trains_evaluates_and_samples(prepared_run, tmp_path, monkeypatch):
    """Issue 13's acceptance: BOS=5, EOS=9 (ids 1 and 2 are ordinary byte pieces here)."""
    model_file = _train_sp(prepared_run, tmp_path / "odd", unk_id=0, bos_id=5, eos_id=9, pad_id=-1)
    run = tmp_path / "run"
    shutil.copytree(RunDir(prepared_run).clean, RunDir(run).clean)
    cfg = tiny_config(f"tokenizer.model_file={model_file}", "train.steps=4", "eval.every_steps=4",
                      "checkpoint.every_steps=4", "eval.sample_tokens=6")
    scored, sampled = [], []
    make_scorer, generate = tasks.make_scorer, pipeline.generate

    def spy_scorer(*a, **k):
        score = make_scorer(*a, **k)
        return lambda params, pairs, **kw: scored.extend(pairs) or score(params, pairs, **kw)

    monkeypatch.setattr(tasks, "make_scorer", spy_scorer)
    monkeypatch.setattr(pipeline, "generate", lambda *a, **k: sampled.append((a[2], k["eos_id"])) or generate(*a, **k))
    result = pipeline.run(cfg, run)

    # Trains: every document in the shards is BOS + text + EOS with the tokenizer's ids, each once.
    for split in ("train", "validation"):
        src = shards.data_source(run, split, "stdlib_docs")
        for i in range(min(len(src), 20)):
            tokens = np.asarray(src[i]["tokens"])
            assert (tokens[0], tokens[-1]) == (5, 9) and (tokens == 5).sum() == 1 and (tokens == 9).sum() == 1
    assert np.isfinite(result["eval"]["eval/loss"]) and result["eval"]["eval/loss"] < np.log(512)
    # Evaluates: every task context starts with BOS=5 (and never with 1).
    assert scored and all(ctx[0] == 5 for ctx, _ in scored)
    assert 0.0 <= result["eval"]["tasks/next_line/acc"] <= 1.0
    # Samples: the prompt starts with BOS=5 and generation stops at EOS=9.
    (prompts, eos_id), = sampled
    assert prompts[0][0] == 5 and eos_id == 9
    # Hands off: config.json names the tokenizer's ids.
    out = export_run(cfg, run, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (5, 9)


def test_a_tokenizer_without_bos_is_refused_in_one_line_naming_the_file(prepared_run, tmp_path, capsys):
    model_file = _train_sp(prepared_run, tmp_path / "nobos", unk_id=0, bos_id=-1, eos_id=1, pad_id=-1)
    code = cli.main(["tokenizer", "--config", "tiny", "--run-dir", str(tmp_path / "run"),
                     f"tokenizer.model_file={model_file}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and str(model_file) in err and "BOS" in err

    # A tokenizer.json whose tokenizer_config.json names no BOS token: refused the same way.
    hf_dir = tmp_path / "hfdir"
    hf_dir.mkdir()
    (hf_dir / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"a": 0, "</s>": 1}, "unk_token": "a"}}))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(tok.TokenizerError, match="tokenizer.json: no BOS/EOS"):
        tok.install_tokenizer(hf_dir, tmp_path / "run2")


def test_exported_sentencepiece_tokenizer_is_read_exactly_by_transformers(prepared_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    files = sorted(RunDir(prepared_run).clean.glob("*.train.jsonl"))
    run = RunDir(tmp_path / "run")
    tok.train_tokenizer(files, run.tokenizer_dir, 512, sample_bytes=300_000,
                        special_tokens=("<|code|>", "<|endoftext|>"))
    out = tmp_path / "hf"
    out.mkdir()
    ours = export_tokenizer(run, out, max_len=64)
    theirs = transformers.AutoTokenizer.from_pretrained(str(out))  # the pinned protobuf + sentencepiece load it
    assert (theirs.bos_token_id, theirs.eos_token_id) == (ours.bos_id, ours.eos_id)
    for text in STRINGS:
        ids = ours.encode(text)
        assert theirs.encode(text) == [ours.bos_id, *ids], text
        assert theirs.encode(text, add_special_tokens=False) == ids, text
        assert theirs.decode(ids) == ours.decode(ids) == text, text


@pytest.mark.parametrize("vocab,says", [
    (4096, r"tokenizer\.vocab_size=4096: the corpus can fill at most (\d+) pieces; set tokenizer\.vocab_size<=(\d+) "
           r"\(and model\.vocab_size to match\) or add data"),
    (100, r"tokenizer\.vocab_size=100: the corpus's characters, the byte pieces and the special pieces need (\d+); "
          r"set tokenizer\.vocab_size>=(\d+) \(and model\.vocab_size to match\)"),
])
def test_a_vocabulary_the_corpus_cannot_fill_is_one_line_naming_the_size_that_works(prepared_run, tmp_path, capsys,
                                                                                     vocab, says):
    """sentencepiece's refusals ("Vocabulary size too high (4096). Please set it to a value <= N", "smaller
    than required_chars") as one config error naming the key and a value that works, not a traceback."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(RunDir(prepared_run).clean, run.clean)  # the finished curation stage (with its marker)
    shutil.copy(RunDir(prepared_run).config, run.config)
    sizes = [f"tokenizer.vocab_size={vocab}", f"model.vocab_size={vocab}", "tokenizer.sample_bytes=4000"]
    assert cli.main(["tokenizer", "--run-dir", str(run), *sizes]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and err.count("\n") == 1, err
    found = re.search(says, err)
    assert found and found[1] == found[2], err
    works = int(found[1])
    assert cli.main(["tokenizer", "--run-dir", str(run), f"tokenizer.vocab_size={works}",
                     f"model.vocab_size={works}", "tokenizer.sample_bytes=4000"]) == 0
    assert tok.load(run.tokenizer).vocab_size == works
