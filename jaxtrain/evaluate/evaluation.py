"""Held-out loss per source and overall, and the unigram baseline it must beat."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np

from jaxtrain.data import loader, shards
from jaxtrain.rundir import RunDir


def evaluate(
    eval_step: Callable[[Any, dict], dict],
    params: Any,
    run: RunDir,
    sources: list[str],
    *,
    seq_len: int,
    batch_size: int,
    rows: list[int],
    max_batches: int,
    to_global: Callable[[dict], dict],
) -> dict[str, float]:
    """Token-weighted mean cross-entropy (nats), perplexity and bits per byte, per source and overall.

    Loss and perplexity count every predicted token, the end of each document
    included. Bits per byte count the same things on both sides: the loss (in
    bits) of predicting the text's tokens, over the UTF-8 bytes of that text
    (from the counts recorded at tokenization); the end-of-document prediction
    has no bytes, so it is left out of both, as lm-evaluation-harness's
    bits_per_byte does. Exact when the whole held-out split is evaluated,
    otherwise the bytes are prorated by the share of text tokens evaluated.
    """
    counts = shards.token_counts(run)
    results: dict[str, float] = {}
    total_loss = total_tokens = total_text_loss = total_bytes = 0.0
    for source in sources:
        loss_sum = tokens = text_loss = text_tokens = 0.0
        # A global pass: every process makes the same batches (the same collective steps) and builds its rows.
        for batch in loader.eval_batches(run, source, seq_len=seq_len, batch_size=batch_size,
                                         max_batches=max_batches, rows=rows):
            out = jax.device_get(eval_step(params, to_global(batch)))
            loss_sum += float(out["loss_sum"])
            tokens += float(out["tokens"])
            text_loss += float(out["text_loss_sum"])
            text_tokens += float(out["text_tokens"])
        split = counts[shards.split_name("validation", source)]
        split_text_tokens = split["tokens"] - split["docs"]  # one end-of-document per document
        nbytes = split["bytes"] * min(text_tokens / max(split_text_tokens, 1), 1.0)
        results[f"eval/{source}/loss"] = loss_sum / max(tokens, 1.0)
        results[f"eval/{source}/bpb"] = text_loss / math.log(2) / max(nbytes, 1.0)
        total_loss += loss_sum
        total_tokens += tokens
        total_text_loss += text_loss
        total_bytes += nbytes
    results["eval/loss"] = total_loss / max(total_tokens, 1.0)
    results["eval/perplexity"] = math.exp(min(results["eval/loss"], 50.0))
    results["eval/bpb"] = total_text_loss / math.log(2) / max(total_bytes, 1.0)
    results["eval/tokens"] = total_tokens
    return results


def unigram_baseline(
    run: RunDir, sources: list[str], vocab_size: int, *, seq_len: int, batch_size: int, max_batches: int
) -> float:
    """Cross-entropy (nats) of add-one-smoothed train-split unigram frequencies on the same eval tokens."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for source in sources:
        src = shards.data_source(run, "train", source)
        for i in range(len(src)):
            counts += np.bincount(np.asarray(src[i]["tokens"][1:]), minlength=vocab_size)[:vocab_size]
    logp = np.log(counts / counts.sum())
    nll = tokens = 0.0
    for source in sources:
        for batch in loader.eval_batches(
            run, source, seq_len=seq_len, batch_size=batch_size, max_batches=max_batches
        ):
            mask = batch["loss_mask"] > 0
            nll -= float(logp[batch["targets"][mask]].sum())
            tokens += float(mask.sum())
    return nll / max(tokens, 1.0)
