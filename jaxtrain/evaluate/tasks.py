"""Downstream tasks scored by log-likelihood: multiple choice and cloze from JSONL files.

A task file has one example per line: {"context": str, "choices": [str, ...],
"label": int}. Each choice is scored by the summed log-probability of its
tokens after the context; `acc` takes the best sum, `acc_norm` the best sum
per UTF-8 byte of the choice (lm-evaluation-harness's normalization).

Two tasks are built offline from the run's held-out text (never trained on):
  next_line  four candidate lines follow a few lines of a held-out document;
             one is the true next line, three come from other documents
  last_word  a held-out prose sentence without its last word; the true word
             against three other words of the held-out text
"""

from __future__ import annotations

import functools
import json
import pathlib
import random
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.data import clean, stages
from jaxtrain.data import tokenizer as tok
from jaxtrain.data.loader import whole_rows
from jaxtrain.rundir import RunDir
from jaxtrain.utils import log

BUILTIN_TASKS = ("next_line", "last_word")


def make_scorer(forward: Callable, seq_len: int, batch_size: int, *, place: Callable[[dict], dict] | None = None,
                out_sharding: Any = None) -> Callable:
    """(params, [(context_ids, continuation_ids)], batch_size=...) -> [(logprob, is_greedy)] for each pair.

    A pair longer than seq_len + 1 tokens loses the start of its context (the continuation is kept whole),
    as lm-evaluation-harness does. Rows are padded to the next power of two of the batch's longest pair
    (at most seq_len): a long model context costs nothing on short requests, and few shapes compile.
    With `place` (numpy batch -> global arrays) and a replicated `out_sharding`, scoring runs sharded on the
    training mesh, on every process of a pod at once (every process scores the same pairs).
    """

    @functools.partial(jax.jit, out_shardings=out_sharding)
    def token_scores(params, batch):
        logits = forward(params, batch)
        logp = jax.nn.log_softmax(logits, axis=-1)
        targets = batch["targets"]
        target_lp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return target_lp, jnp.argmax(logits, axis=-1) == targets

    def row_length(n: int) -> int:
        return min(seq_len, max(128, 1 << max(n - 1, 0).bit_length()))  # >= 128: TPU attention kernels' blocks

    def score(params: Any, pairs: Sequence[tuple[list[int], list[int]]],
              batch_size: int = batch_size) -> list[tuple[float, bool]]:
        results = []
        for start in range(0, len(pairs), batch_size):
            chunk = [((list(ctx) + list(cont))[-(seq_len + 1):], len(cont)) for ctx, cont in pairs[start:start + batch_size]]
            L = row_length(max(len(ids) - 1 for ids, _ in chunk))
            inputs = np.zeros((batch_size, L), np.int32)
            targets = np.zeros((batch_size, L), np.int32)
            spans = []
            for row, (ids, n_cont) in enumerate(chunk):
                n_cont = min(n_cont, len(ids) - 1)
                inputs[row, : len(ids) - 1] = ids[:-1]
                targets[row, : len(ids) - 1] = ids[1:]
                spans.append((len(ids) - 1 - n_cont, len(ids) - 1))
            batch = whole_rows(inputs, targets)
            lp, greedy = jax.device_get(token_scores(params, place(batch) if place else batch))
            for row, (a, b) in enumerate(spans):
                results.append((float(lp[row, a:b].sum()), bool(greedy[row, a:b].all())))
        return results

    return score


def evaluate_task(score: Callable, params: Any, tokenizer: tok.Tokenizer, examples: list[dict]) -> dict[str, float]:
    pairs, owners = [], []
    for i, ex in enumerate(examples):
        ctx = [tokenizer.bos_id, *tokenizer.encode(ex["context"])]
        for choice in ex["choices"]:
            pairs.append((ctx, tokenizer.encode(choice)))
            owners.append(i)
    scores = score(params, pairs)
    correct = correct_norm = 0
    k = 0
    for ex in examples:
        n = len(ex["choices"])
        lps = [s for s, _ in scores[k:k + n]]
        norm = [lp / max(len(c.encode("utf-8")), 1) for lp, c in zip(lps, ex["choices"])]
        correct += int(np.argmax(lps) == ex["label"])
        correct_norm += int(np.argmax(norm) == ex["label"])
        k += n
    total = max(len(examples), 1)
    return {"acc": correct / total, "acc_norm": correct_norm / total, "examples": len(examples)}


def read_task(path: pathlib.Path) -> list[dict]:
    examples = []
    for lineno, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        ex = json.loads(line)
        if not (isinstance(ex.get("context"), str) and isinstance(ex.get("choices"), list)
                and isinstance(ex.get("label"), int) and 0 <= ex["label"] < len(ex["choices"])):
            raise ValueError(f"{path}:{lineno}: needs context (str), choices (list) and label (index into choices)")
        examples.append(ex)
    return examples


def builtin_task_paths(run: RunDir) -> list[pathlib.Path]:
    return [RunDir(run).tasks / f"{name}.jsonl" for name in BUILTIN_TASKS]


def prepare_tasks(run: RunDir, examples: int, seed: int) -> None:
    """The built-in tasks from the run's held-out documents: an atomic stage (jaxtrain.data.stages),
    redone when the cleaned corpus, the example count or the seed changed."""
    run = RunDir(run)
    inputs = {"corpus": stages.upstream_digest(run, "curation"), "examples": examples, "seed": seed}
    if stages.done(run, "tasks", inputs):
        return
    sizes = {}

    def write(tmp_dir) -> str:
        paths = build_tasks(run.clean, tmp_dir, examples, seed)
        sizes.update({name: len(p.read_text().splitlines()) for name, p in paths.items()})
        return stages.file_digest(*(paths[name] for name in BUILTIN_TASKS))

    stages.build(run, "tasks", inputs, write)
    log(f"[tasks] built from held-out text: {sizes} examples in {run.tasks}")


def _held_out_docs(clean_dir: pathlib.Path) -> list[tuple[str, str]]:
    docs = []
    for path in clean.all_split_files(clean_dir, "validation"):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            docs.append((record["source"], record["text"]))
    return docs


def build_tasks(clean_dir: pathlib.Path, out_dir: pathlib.Path, examples: int = 64, seed: int = 0) -> dict[str, pathlib.Path]:
    """Write next_line.jsonl and last_word.jsonl from the held-out documents (deterministic)."""
    rng = random.Random(seed)
    docs = _held_out_docs(clean_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    lines = [[ln for ln in text.split("\n")] for _, text in docs]
    candidates = [(d, i) for d, ls in enumerate(lines) for i in range(3, len(ls))
                  if len(ls[i].strip()) >= 20 and sum(bool(x.strip()) for x in ls[i - 3:i]) >= 2]
    pool = [(d, ln) for d, ls in enumerate(lines) for ln in ls if len(ln.strip()) >= 20]
    next_line = []
    for d, i in rng.sample(candidates, min(examples, len(candidates))):
        others = [ln for dd, ln in rng.sample(pool, min(len(pool), 40)) if dd != d and ln != lines[d][i]][:3]
        if len(others) < 3:
            continue
        choices = [lines[d][i], *others]
        rng.shuffle(choices)
        next_line.append({"context": "\n".join(lines[d][i - 3:i]) + "\n", "choices": choices,
                          "label": choices.index(lines[d][i])})

    sentences = [s for _, text in docs for s in re.split(r"(?<=[.!?])\s+", text)
                 if len(s.split()) >= 8 and re.fullmatch(r"[A-Za-z]{3,}[.!?]", s.split()[-1] or "")]
    words = sorted({w for s in sentences for w in re.findall(r"\b[a-z]{4,}\b", s)})
    last_word = []
    for s in rng.sample(sentences, min(examples, len(sentences))):
        *head, last = s.split()
        answer = last[:-1]
        distractors = [w for w in rng.sample(words, min(len(words), 10)) if w != answer][:3]
        if len(distractors) < 3:
            continue
        choices = [" " + answer, *(" " + w for w in distractors)]
        rng.shuffle(choices)
        last_word.append({"context": " ".join(head), "choices": choices, "label": choices.index(" " + answer)})

    paths = {}
    for name, rows in (("next_line", next_line), ("last_word", last_word)):
        paths[name] = out_dir / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return paths
