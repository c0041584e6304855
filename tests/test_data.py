import json

import numpy as np
import pytest

from jaxtrain.data import loader, shards
from jaxtrain.data import tokenizer as tok
from jaxtrain.errors import ConfigError
from jaxtrain.rundir import RunDir
from jaxtrain.models.attention import attention_mask

from conftest import tiny_config


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_tokenizer_round_trips_code_and_has_specials(prepared_run):
    tokenizer = tok.load(RunDir(prepared_run).tokenizer)
    sp = tokenizer.sp
    assert tokenizer.vocab_size == sp.vocab_size() == 512
    assert (sp.bos_id(), sp.eos_id(), sp.pad_id()) == (tokenizer.bos_id, tokenizer.eos_id, 0) == (1, 2, 0)
    text = "def f(x):\n    return {'a': x ** 2}  # naïve ✓\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert sp.unk_id() not in tokenizer.encode("\x07 ☃ 漢字")  # byte fallback: nothing is <unk>


def test_user_defined_special_tokens_stay_whole(prepared_run, tmp_path):
    files = sorted(RunDir(prepared_run).clean.glob("*.train.jsonl"))
    model = tok.train_tokenizer(files, tmp_path, 400, sample_bytes=300_000, special_tokens=("<|code|>", "<|endoftext|>"))
    tokenizer = tok.load(model)
    ids = tokenizer.encode("<|code|>x = 1<|endoftext|>")
    assert tokenizer.token_to_id("<|code|>") in ids and tokenizer.token_to_id("<|endoftext|>") == ids[-1]
    assert tokenizer.decode(ids) == "<|code|>x = 1<|endoftext|>"


def test_shards_hold_every_clean_document(prepared_run):
    tokenizer = tok.load(RunDir(prepared_run).tokenizer)
    counts = shards.token_counts(prepared_run)
    for source in ("stdlib_code", "stdlib_docs"):
        for split in ("train", "validation"):
            lines = (RunDir(prepared_run).clean / f"{source}.{split}.jsonl").read_text().splitlines()
            src = shards.data_source(prepared_run, split, source)
            assert len(src) == len(lines) == counts[shards.split_name(split, source)]["docs"] > 0
            first = np.asarray(src[0]["tokens"])
            assert first[0] == tokenizer.bos_id and first[-1] == tokenizer.eos_id


def _iterator(run, seed=0, **kw):
    return loader.train_iterator(
        run, ["stdlib_code", "stdlib_docs"], [0.7, 0.3], seq_len=64, batch_size=4, seed=seed, **kw
    )


def test_pipeline_is_deterministic_and_seeded(prepared_run):
    a, b, c = _take(_iterator(prepared_run), 5), _take(_iterator(prepared_run), 5), _take(_iterator(prepared_run, 1), 5)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c))


def test_iterator_state_resumes_exactly(prepared_run):
    it = _iterator(prepared_run)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # must survive JSON (it goes into the checkpoint)
    expected = _take(it, 4)
    it2 = _iterator(prepared_run)
    it2.set_state(state)
    for x, y in zip(expected, _take(it2, 4)):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])


def test_process_rows_are_disjoint_and_cover_the_global_batch(prepared_run):
    """Each process builds only its rows of the global batch (the rows its devices hold); together they
    are exactly the batch a single process builds."""
    whole = _take(_iterator(prepared_run), 3)
    parts = [_take(_iterator(prepared_run, rows=rows), 3) for rows in ([0, 2], [1, 3])]
    for t in range(3):
        for key in whole[t]:
            np.testing.assert_array_equal(parts[0][t][key], whole[t][key][[0, 2]])
            np.testing.assert_array_equal(parts[1][t][key], whole[t][key][[1, 3]])


def test_every_token_seen_once_per_epoch(prepared_run):
    source = "stdlib_docs"
    src = shards.data_source(prepared_run, "train", source)
    expected = np.zeros(512, np.int64)
    for i in range(len(src)):
        expected += np.bincount(np.asarray(src[i]["tokens"])[1:], minlength=512)
    ordered = loader.source_rows(prepared_run, "train", source, seq_len=64, seed=None)  # one pass, last row padded
    got = np.zeros(512, np.int64)
    for start in range(0, len(ordered), 4):
        batch = loader.collate([ordered[i] for i in range(start, min(start + 4, len(ordered)))])
        got += np.bincount(batch["targets"][batch["loss_mask"] > 0], minlength=512)
    np.testing.assert_array_equal(got, expected)


def test_shuffled_epochs_tile_the_stream(prepared_run):
    """Training rows of one epoch are a permutation of the rows that tile the stream; the next epoch uses
    another order and shifted row boundaries."""
    from jaxtrain.data.rows import RowReader

    reader = RowReader(prepared_run, "train", "stdlib_docs", 64)
    n0, n1 = reader.epoch_start(1), reader.epoch_start(2) - reader.epoch_start(1)
    epoch0 = [reader.shuffled(k, seed=7)["targets"] for k in range(n0)]
    in_order = [reader.row(c, wrap=True)["targets"] for c in range(n0)]
    assert sorted(map(bytes, epoch0)) == sorted(map(bytes, in_order)) and list(map(bytes, epoch0)) != list(map(bytes, in_order))
    epoch1 = [reader.shuffled(n0 + k, seed=7)["targets"] for k in range(n1)]
    assert sorted(map(bytes, epoch1)) == sorted(bytes(reader.row(c, wrap=True)["targets"]) for c in range(n0, n0 + n1))
    assert reader.total_pairs % 64 == 0 or not set(map(bytes, epoch1)) & set(map(bytes, epoch0))


def test_packing_never_crosses_document_boundaries(prepared_run):
    src = shards.data_source(prepared_run, "train", "stdlib_docs")
    docs = [np.asarray(src[i]["tokens"]).tobytes() for i in range(len(src))]
    it = loader.train_iterator(prepared_run, ["stdlib_docs"], [1.0], seq_len=256, batch_size=4, seed=0)
    pieces = rows_with_several = 0
    for batch in _take(it, 20):
        for row in range(batch["inputs"].shape[0]):
            seg, pos, inp, tgt = (batch[k][row] for k in ("segment_ids", "positions", "inputs", "targets"))
            for s in np.unique(seg[seg > 0]):
                idx = np.flatnonzero(seg == s)
                assert np.all(np.diff(idx) == 1), "a segment must be contiguous"
                np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
                # Each segment is a contiguous run of exactly one document's tokens, and the
                # attention mask lets it see nothing else.
                piece = np.concatenate([inp[idx], tgt[idx][-1:]]).astype(np.int32).tobytes()
                assert any(piece in d for d in docs)
                pieces += 1
            rows_with_several += len(np.unique(seg[seg > 0])) > 1
            assert np.all(batch["loss_mask"][row][seg == 0] == 0)
            mask = np.asarray(attention_mask(seg[None]))[0]
            query, key = np.nonzero(mask)
            assert np.all(seg[query] == seg[key]) and np.all(key <= query)
    assert rows_with_several > 0, "packing should put several documents in some rows"


def test_positions_restart_per_piece():
    seg = np.array([[1, 1, 1, 2, 2, 3, 0, 0]])
    np.testing.assert_array_equal(loader.positions_from_segments(seg), [[0, 1, 2, 0, 1, 0, 0, 1]])


def test_mixture_weights_natural_and_explicit(prepared_run):
    natural = loader.mixture_weights(shards.token_counts(prepared_run), ["stdlib_code", "stdlib_docs"], [0.0, 0.0])
    assert sum(natural) == pytest.approx(1.0) and natural[0] > natural[1]
    assert loader.mixture_weights(shards.token_counts(prepared_run), ["stdlib_code", "stdlib_docs"], [1.0, 3.0]) == pytest.approx([0.25, 0.75])


def test_an_explicit_weight_is_the_final_share_beside_unweighted_sources(prepared_run):
    """#24.5: 0.5 beside an unweighted source trains at 50%, whatever the natural shares (it was renormalized
    with them); weights that leave nothing for the unweighted sources are refused in one line."""
    counts = shards.token_counts(prepared_run)
    names = ["stdlib_code", "stdlib_docs"]
    assert loader.mixture_weights(counts, names, [0.0, 0.2]) == pytest.approx([0.8, 0.2])
    assert loader.mixture_weights(counts, names, [0.0, 0.5], temperature=2.0) == pytest.approx([0.5, 0.5])
    it = loader.train_iterator(prepared_run, names, loader.mixture_weights(counts, names, [0.0, 0.2]), seq_len=128,
                               batch_size=8, seed=0)
    tokens = sum(loader.realized_mixture(next(it), 2) for _ in range(100))
    assert abs(tokens[1] / tokens.sum() - 0.2) < 0.05, tokens[1] / tokens.sum()
    with pytest.raises(ConfigError, match=r"data.sources\[\*\].weight: .* summing to 1.2, which leaves nothing for "
                                          r"\['stdlib_code'\]"):
        tiny_config("data.sources=[{name: stdlib_code, content: code}, {name: stdlib_docs, content: docs, weight: 1.2}]")


def test_temperature_flattens_the_mixture(prepared_run):
    counts = shards.token_counts(prepared_run)
    n = [counts[shards.split_name("train", s)]["tokens"] for s in ("stdlib_code", "stdlib_docs")]
    hot = loader.mixture_weights(shards.token_counts(prepared_run), ["stdlib_code", "stdlib_docs"], [0.0, 0.0], temperature=2.0)
    expected = np.sqrt(n) / np.sqrt(n).sum()
    assert hot == pytest.approx(expected.tolist())
    natural = loader.mixture_weights(shards.token_counts(prepared_run), ["stdlib_code", "stdlib_docs"], [0.0, 0.0])
    assert abs(hot[0] - 0.5) < abs(natural[0] - 0.5)


def test_unpacked_rows_hold_one_document_each(prepared_run):
    it = loader.train_iterator(prepared_run, ["stdlib_docs"], [1.0], seq_len=64, batch_size=4, seed=0, pack=False)
    batch = next(it)
    seg = batch["segment_ids"]
    assert seg.shape == (4, 64) and set(np.unique(seg)) <= {0, 1}
    assert (np.diff(seg, axis=1) <= 0).all()  # ones then padding, never a second document
    np.testing.assert_array_equal(batch["loss_mask"], (seg != 0).astype(np.float32))


def test_realized_mixture_follows_the_weights(prepared_run):
    it = loader.train_iterator(prepared_run, ["stdlib_code", "stdlib_docs"], [0.25, 0.75], seq_len=128,
                               batch_size=8, seed=0)
    tokens = sum(loader.realized_mixture(next(it), 2) for _ in range(200))
    assert tokens.sum() == 200 * 8 * 128  # packed rows: every target token counts
    # weights are token shares; documents are drawn with probabilities corrected for their length
    assert abs(tokens[1] / tokens.sum() - 0.75) < 0.1, tokens[1] / tokens.sum()


def test_mixture_schedule_switches_and_resumes_exactly(prepared_run):
    def make():
        return loader.train_iterator(prepared_run, ["stdlib_code", "stdlib_docs"], [0.9, 0.1], seq_len=128,
                                     batch_size=8, seed=0, schedule=[(150, [0.1, 0.9])])
    it = make()
    before = sum(loader.realized_mixture(next(it), 2) for _ in range(150))
    state = it.get_state()
    after = [next(it) for _ in range(150)]
    share_after = sum(loader.realized_mixture(b, 2) for b in after[10:])  # the packer drains the last stage's docs
    code_before, code_after = before[0] / before.sum(), share_after[0] / share_after.sum()
    assert code_before > 0.6 and code_after < 0.4, (code_before, code_after)
    resumed = make()
    resumed.set_state(state)
    for a, b in zip(after, (next(resumed) for _ in range(150))):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_schedule_maps_global_rows_to_source_rows():
    from jaxtrain.data.schedule import MixtureSchedule, row_stages

    schedule = MixtureSchedule(row_stages([(0, [0.75, 0.25]), (10, [0.0, 1.0])], batch_size=8))
    assert schedule.rows_per_source(0, 80) == [60, 20]  # exact shares within a stage
    assert schedule.rows_per_source(80, 160) == [0, 80]  # the switch lands on step 10 exactly
    picked = [schedule[g] for g in range(200)]
    for source in (0, 1):  # every source's rows are used in order, none twice, none skipped, across stages
        assert [i for s, i in picked if s == source] == list(range(sum(s == source for s, _ in picked)))


def test_bad_mixture_schedule_is_refused():
    from jaxtrain.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"data\.mixture_schedule\[0\]\.weights: \[1\.0\] needs one weight"):
        load_config("tiny", ["data.mixture_schedule=[{step: 10, weights: [1.0]}]"])
    with pytest.raises(ConfigError, match=r"data\.mixture_schedule\[1\]\.step: 5 must be > 10"):
        load_config("tiny", ["data.mixture_schedule=[{step: 10, weights: [1, 1]}, {step: 5, weights: [1, 0]}]"])
    cfg = load_config("tiny", ["data.mixture_schedule=[{step: 10, weights: [0.2, 0.8]}]"])
    assert cfg.data.mixture_schedule[0].weights == (0.2, 0.8)
