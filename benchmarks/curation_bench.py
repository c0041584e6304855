"""Curation, tokenizer and loader throughput, with same-run references.

    pip install datasketch==2.0.0    # the reference MinHash (not a project dependency)
    python benchmarks/curation_bench.py [--docs 3000] [--repeats 3] [--out benchmarks/results/curation.json]

1. MinHash signatures: jaxtrain.data.minhash (one permutation hashing, and its k-permutation
   mode) vs datasketch (MinHash, 112 permutations, the same
   word 5-gram shingles), docs/s and MB/s on one core; LSH (14 x 8) candidate pairs of both
   checked against exact Jaccard of the shingle sets (precision/recall at 0.7) and against each other.
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

    from jaxtrain.data.minhash import MinHasher, band_keys

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
    # candidate pairs from both LSH setups (14 bands x 8 rows)
    buckets: dict = {}
    for i, sig in enumerate(sigs):
        for k in band_keys(sig, 14, 8):
            buckets.setdefault(k, []).append(i)
    ours_pairs = {(a, b) for docs in buckets.values() for a, b in itertools.combinations(sorted(docs), 2)}
    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    for i, m in enumerate(ds):
        lsh.insert(i, m)
    ds_pairs = {tuple(sorted((i, j))) for i, m in enumerate(ds) for j in lsh.query(m) if i != j}
    shingle_sets = {}

    def exact(i: int, j: int) -> float:
        for k in (i, j):
            if k not in shingle_sets:
                shingle_sets[k] = set(shingles(texts[k]))
        a, b = shingle_sets[i], shingle_sets[j]
        return len(a & b) / max(len(a | b), 1)

    truth = {p for p in ours_pairs | ds_pairs if exact(*p) >= 0.7}

    def quality(pairs: set) -> dict:
        hits = len(pairs & truth)
        return {"candidate_pairs": len(pairs), "precision_at_0.7": round(hits / max(len(pairs), 1), 4),
                "recall_at_0.7": round(hits / max(len(truth), 1), 4)}

    return {
        "docs": len(texts), "mb": round(mb, 2),
        "jaxtrain_docs_per_s": round(len(texts) / t_ours), "jaxtrain_mb_per_s": round(mb / t_ours, 2),
        "jaxtrain_kperm_docs_per_s": round(len(texts) / t_kperm),
        "datasketch_update_batch_docs_per_s": round(len(texts) / t_batch),
        "datasketch_update_docs_per_s": round(len(texts) / t_update),
        "speedup_vs_update_batch": round(t_batch / t_ours, 2), "speedup_vs_update": round(t_update / t_ours, 2),
        "true_pairs_at_0.7": len(truth), "jaxtrain": quality(ours_pairs), "datasketch": quality(ds_pairs),
        "pair_sets_jaccard": round(len(ours_pairs & ds_pairs) / max(len(ours_pairs | ds_pairs), 1), 4),
    }


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
                return n_batches * cfg.train.batch_size * cfg.data.seq_len / (time.perf_counter() - t)
            name = f"loader_tokens_per_s_{'packed' if pack else 'padded'}"
            out[name] = round(statistics.median(drain() for _ in range(repeats)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/curation.json")
    args = parser.parse_args()
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d")}
    result["minhash"] = bench_minhash(_documents(args.docs), args.repeats)
    print(json.dumps(result["minhash"], indent=1), flush=True)
    result["stages"] = bench_stages(args.repeats)
    print(json.dumps(result["stages"], indent=1), flush=True)
    result.update(bench_tokenizer_and_loader(args.repeats))
    print(json.dumps(result, indent=1))
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
