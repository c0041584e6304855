"""Curation, tokenizer and loader throughput, with same-run references.

    pip install datasketch==2.0.0    # the reference MinHash (not a project dependency)
    python benchmarks/curation_bench.py [--docs 3000] [--repeats 3] [--out benchmarks/results/curation.json]

1. MinHash signatures: jaxtrain.data.minhash (one permutation hashing, and its k-permutation
   mode) vs datasketch (MinHash, 112 permutations, the same
   word 5-gram shingles), docs/s and MB/s on one core; LSH (14 x 8) candidate pairs of both
   checked against the exact Jaccard of every pair (brute force: precision and recall at 0.7 and
   0.8) and against each other; and `lsh_quality`: the same for a sample with edited copies spread
   over the similarity range, the observed candidate rate per Jaccard bin beside the theoretical
   S-curve 1 - (1 - s^8)^14.
2. Curation per stage (read, judge = normalize + rules + PII, MinHash) in MB/s on one core,
   and the whole Beam pipeline on the embedded default with 1 and 2 DirectRunner workers.
3. Tokenizer: sentencepiece training time (BPE and unigram) and encode MB/s.
4. Loader: tokens/s out of ArrayRecord through shuffle, mix, pack (or pad) and batch.
Medians over --repeats.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _documents(n: int) -> list[str]:
    from jaxtrain.data import clean, corpus

    docs = itertools.chain(corpus.stdlib_docs(), corpus.package_metadata(), corpus.stdlib_code())
    out = []
    for d in docs:
        if d.text and len(d.text) > 200:
            out.append(clean.normalize(d.text)[:200_000])
        if len(out) >= n:
            break
    return out


def bench_minhash(texts: list[str], repeats: int) -> dict:
    from datasketch import MinHash, MinHashLSH

    from jaxtrain.data.minhash import MinHasher

    mb = sum(len(t.encode()) for t in texts) / 1e6
    hasher = MinHasher(num_perm=112, ngram=5)

    def shingles(t: str) -> list[bytes]:
        w = t.encode().split()
        return [b" ".join(w[i:i + 5]) for i in range(max(len(w) - 4, 1))]

    def ours():
        return hasher.signatures(texts)

    def ds_batch():
        out = []
        for t in texts:
            m = MinHash(num_perm=112)
            m.update_batch(shingles(t))
            out.append(m)
        return out

    def ds_update():
        for t in texts:
            m = MinHash(num_perm=112)
            for s in shingles(t):
                m.update(s)

    kperm = MinHasher(num_perm=112, ngram=5, method="kperm")
    t_ours, t_kperm, t_batch, t_update = (_median_time(f, repeats) for f in
                                          (ours, lambda: kperm.signatures(texts), ds_batch, ds_update))
    sigs, ds = ours(), ds_batch()
    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    for i, m in enumerate(ds):
        lsh.insert(i, m)
    ds_pairs = {tuple(sorted((i, j))) for i, m in enumerate(ds) for j in lsh.query(m) if i != j}
    ours_pairs = candidate_pairs(sigs, 14, 8)
    exact = all_pairs_jaccard(texts)
    return {
        "docs": len(texts), "mb": round(mb, 2),
        "jaxtrain_docs_per_s": round(len(texts) / t_ours), "jaxtrain_mb_per_s": round(mb / t_ours, 2),
        "jaxtrain_kperm_docs_per_s": round(len(texts) / t_kperm),
        "datasketch_update_batch_docs_per_s": round(len(texts) / t_batch),
        "datasketch_update_docs_per_s": round(len(texts) / t_update),
        "speedup_vs_update_batch": round(t_batch / t_ours, 2), "speedup_vs_update": round(t_update / t_ours, 2),
        "jaxtrain": {f"at_{t}": pair_quality(ours_pairs, exact, t) for t in (0.7, 0.8)},
        "datasketch": {f"at_{t}": pair_quality(ds_pairs, exact, t) for t in (0.7, 0.8)},
        "pair_sets_jaccard": round(len(ours_pairs & ds_pairs) / max(len(ours_pairs | ds_pairs), 1), 4),
    }


def _shingle_bytes(t: str, n: int = 5) -> list[bytes]:
    """Word n-grams as MinHasher forms them (ASCII-whitespace words; a shorter text is one shingle)."""
    w = t.encode().split()
    return [b" ".join(w[i:i + n]) for i in range(max(len(w) - n + 1, 1))]


def all_pairs_jaccard(texts: list[str]) -> dict[tuple[int, int], float]:
    """Exact Jaccard of the 5-gram sets of every pair of documents that shares a shingle (brute force
    over all pairs, as one sparse product: intersections = A @ A.T); absent pairs have Jaccard 0."""
    import numpy as np
    from scipy import sparse

    ids: dict[bytes, int] = {}
    rows, cols = [], []
    for i, t in enumerate(texts):
        for s in set(_shingle_bytes(t)):
            rows.append(i)
            cols.append(ids.setdefault(s, len(ids)))
    a = sparse.csr_matrix((np.ones(len(rows), np.int32), (rows, cols)), shape=(len(texts), len(ids)))
    sizes = np.asarray(a.sum(axis=1)).ravel()
    inter = sparse.triu(a @ a.T, k=1).tocoo()
    union = sizes[inter.row] + sizes[inter.col] - inter.data
    return {(int(i), int(j)): float(x / u) for i, j, x, u in zip(inter.row, inter.col, inter.data, union)}


def candidate_pairs(signatures, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs of documents that share at least one LSH band key (what near dedup compares)."""
    from jaxtrain.data.minhash import band_keys

    buckets: dict = {}
    for i, sig in enumerate(signatures):
        for k in band_keys(sig, bands, rows):
            buckets.setdefault(k, []).append(i)
    return {(a, b) for docs in buckets.values() for a, b in itertools.combinations(sorted(set(docs)), 2)}


def pair_quality(candidates: set, exact: dict, threshold: float) -> dict:
    """Precision and recall of LSH candidates against every pair at or above the threshold."""
    truth = {p for p, j in exact.items() if j >= threshold}
    hits = len(candidates & truth)
    return {"true_pairs": len(truth), "candidate_pairs": len(candidates),
            "precision": round(hits / max(len(candidates), 1), 4), "recall": round(hits / max(len(truth), 1), 4)}


def lsh_quality(texts: list[str], bands: int = 14, rows: int = 8, edited: int = 400, seed: int = 0) -> dict:
    """jaxtrain's MinHash LSH against brute-force Jaccard over all pairs of a sample, with the
    theoretical S-curve 1 - (1 - s^r)^b beside the observed candidate rate per similarity bin.

    Real documents rarely pair up between Jaccard 0.3 and 1, so `edited` copies of sample documents
    (a random 0-10% of their words replaced) spread pairs over the whole range."""
    import numpy as np

    from jaxtrain.data.minhash import MinHasher

    rng = np.random.default_rng(seed)
    sample = list(texts)
    for i in rng.choice(len(texts), min(edited, len(texts)), replace=False):
        words = texts[i].split()
        for k in rng.choice(len(words), int(len(words) * rng.uniform(0, 0.1)), replace=False):
            words[k] = f"edit{k}"
        sample.append(" ".join(words))
    exact = all_pairs_jaccard(sample)
    candidates = candidate_pairs(MinHasher(num_perm=bands * rows, ngram=5).signatures(sample), bands, rows)
    curve = []
    for lo in np.arange(0.0, 1.0, 0.1):
        pairs = [p for p, j in exact.items() if lo <= j < lo + 0.1 or (lo >= 0.9 and j == 1.0)]
        if pairs:
            s = np.array([exact[p] for p in pairs])
            curve.append({"jaccard": f"{lo:.1f}-{lo + 0.1:.1f}", "pairs": len(pairs),
                          "observed": round(sum(p in candidates for p in pairs) / len(pairs), 4),
                          "theory": round(float(np.mean(1 - (1 - s ** rows) ** bands)), 4)})
    n = len(sample)
    return {"docs": n, "all_pairs": n * (n - 1) // 2, "pairs_sharing_a_shingle": len(exact),
            "bands": bands, "rows": rows, **{f"at_{t}": pair_quality(candidates, exact, t) for t in (0.7, 0.8)},
            "s_curve": curve}


def bench_stages(repeats: int) -> dict:
    from jaxtrain.config import load_config
    from jaxtrain.data import corpus, curate, prepare
    from jaxtrain.data.minhash import MinHasher
    from jaxtrain.rundir import RunDir

    cfg = load_config("demo")
    rules = curate.source_rules(cfg.data)
    docs = []
    t_read = _median_time(lambda: docs.__setitem__(slice(None), [d for s in cfg.data.sources
                                                                 for d in corpus.embedded_source(s.name)]), repeats)
    mb = sum(len(d.text.encode("utf-8", "replace")) for d in docs if d.text) / 1e6
    from jaxtrain.data import clean

    judged = []
    t_judge = _median_time(lambda: judged.__setitem__(slice(None), [clean.judge(d, rules[d.source]) for d in docs]), repeats)
    kept = [e["text"] for e in judged if e["bucket"] == "kept"]
    kept_mb = sum(len(t.encode()) for t in kept) / 1e6
    t_minhash = _median_time(lambda: MinHasher().signatures(kept), repeats)
    out = {"input_docs": len(docs), "input_mb": round(mb, 1),
           "read_mb_per_s": round(mb / t_read, 1), "judge_mb_per_s": round(mb / t_judge, 1),
           "minhash_mb_per_s": round(kept_mb / t_minhash, 1)}
    for workers in (1, 2):
        def whole():
            with tempfile.TemporaryDirectory() as tmp:
                run_cfg = load_config("demo", [f"data.curate_workers={workers}"])
                prepare.prepare_corpus(run_cfg.data, RunDir(tmp))
        t = _median_time(whole, repeats)
        out[f"pipeline_{workers}_workers_s"] = round(t, 1)
        out[f"pipeline_{workers}_workers_mb_per_s"] = round(mb / t, 2)
    out["pipeline_speedup_2_vs_1"] = round(out["pipeline_1_workers_s"] / out["pipeline_2_workers_s"], 2)
    return out


def bench_tokenizer_and_loader(repeats: int) -> dict:
    from jaxtrain.config import load_config
    from jaxtrain.data import loader, prepare, shards
    from jaxtrain.data import tokenizer as tok
    from jaxtrain.rundir import RunDir

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = pathlib.Path(tmp) / "run"
        cfg = load_config("demo")
        prepare.prepare_corpus(cfg.data, RunDir(run))
        files = [RunDir(run).clean / f"{s.name}.train.jsonl" for s in cfg.data.sources]
        sample_mb = min(cfg.tokenizer.sample_bytes, sum(f.stat().st_size for f in files)) / 1e6
        texts = [json.loads(line)["text"] for f in files for line in f.read_text().splitlines()]
        text_mb = sum(len(t.encode()) for t in texts) / 1e6
        for kind in ("bpe", "unigram"):
            d = pathlib.Path(tmp) / kind
            t = _median_time(lambda: tok.train_tokenizer(files, d, cfg.tokenizer.vocab_size, kind,
                                                         sample_bytes=cfg.tokenizer.sample_bytes), repeats)
            sp = tok.load(d / tok.MODEL_NAME).sp  # the sentencepiece processor itself
            t_enc = _median_time(lambda: sp.encode(texts, num_threads=1), repeats)  # one thread, as the shard builder
            out[f"tokenizer_{kind}"] = {"vocab": cfg.tokenizer.vocab_size, "train_s": round(t, 1),
                                        "train_sample_mb": round(sample_mb, 1),
                                        "encode_mb_per_s": round(text_mb / t_enc, 1)}
        prepare.prepare_tokenizer(cfg.tokenizer, cfg.data, cfg.model.vocab_size, RunDir(run))
        prepare.prepare_shards(cfg.data, RunDir(run))
        names = [s.name for s in cfg.data.sources]
        weights = loader.mixture_weights(shards.token_counts(run), names, [0.0] * len(names))
        for pack in (True, False):
            def drain(n_batches: int = 300):
                it = loader.train_iterator(RunDir(run), names, weights, seq_len=cfg.data.seq_len,
                                           batch_size=cfg.train.batch_size, seed=0, pack=pack)
                next(it)  # open the sources outside the timed part
                t = time.perf_counter()
                for _ in range(n_batches):
                    next(it)
                return n_batches * cfg.tokens_per_step / (time.perf_counter() - t)
            name = f"loader_tokens_per_s_{'packed' if pack else 'padded'}"
            out[name] = round(statistics.median(drain() for _ in range(repeats)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lsh-docs", type=int, default=2000, help="sample for the all-pairs LSH check (+400 edited)")
    parser.add_argument("--out", default="benchmarks/results/curation.json")
    args = parser.parse_args()
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d")}
    docs = _documents(args.docs)
    result["minhash"] = bench_minhash(docs, args.repeats)
    print(json.dumps(result["minhash"], indent=1), flush=True)
    result["lsh_quality"] = lsh_quality(docs[: args.lsh_docs])
    print(json.dumps(result["lsh_quality"], indent=1), flush=True)
    result["stages"] = bench_stages(args.repeats)
    print(json.dumps(result["stages"], indent=1), flush=True)
    result.update(bench_tokenizer_and_loader(args.repeats))
    print(json.dumps(result, indent=1))
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
