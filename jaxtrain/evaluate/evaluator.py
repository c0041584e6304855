"""The Evaluator: held-out loss per source, downstream tasks, and where their results go.

It owns what evaluation needs (the eval step, the task scorer, the tokenizer,
the metrics writer) and borrows a ModelSession's mesh and shardings (a
Trainer is one), so in-loop and offline evaluation compute exactly the same
numbers; offline evaluation never builds an optimizer. The training loop calls
it as a plain function of (params, step); `jaxtrain.train` never imports this
module.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from etils import epath

from jaxtrain.data import tokenizer as tok
from jaxtrain.evaluate import evaluation, tasks
from jaxtrain.evaluate.report import write_eval
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.train.loss import make_loss_fn
from jaxtrain.train.metrics import MetricsWriter
from jaxtrain.train.step import make_eval_step, make_forward
from jaxtrain.train.trainer import ModelSession
from jaxtrain.utils import log


def format_eval(results: dict[str, float]) -> str:
    per_source = " ".join(
        f"{k.split('/')[1]}={v:.3f}" for k, v in results.items() if k.count("/") == 2 and k.endswith("/loss")
    )
    task_acc = " ".join(f"{k.split('/')[1]}={v:.2f}" for k, v in results.items()
                        if k.startswith("tasks/") and k.endswith("/acc"))
    return (f"eval loss {results['eval/loss']:.4f} (ppl {results['eval/perplexity']:.1f}, "
            f"{results['eval/bpb']:.3f} bits/byte) [{per_source}]" + (f" tasks acc [{task_acc}]" if task_acc else ""))


class Evaluator:
    def __init__(self, session: ModelSession, writer: MetricsWriter | None = None):
        self.session = session
        self.cfg = session.cfg
        self.run = session.run
        self.writer = writer or MetricsWriter(session.run, enabled=jax.process_index() == 0)

    @functools.cached_property
    def tokenizer(self) -> tok.Tokenizer:
        """The run's tokenizer (its end-of-document id, and the tasks' text), read at the first evaluation."""
        return tok.load(self.run.tokenizer)

    @functools.cached_property
    def eval_step(self):
        """Summed losses of a batch on the training mesh; the text-only sums leave out end-of-document."""
        t = self.session
        loss_fn = make_loss_fn(t.spec.graphdef, t.mesh, mesh_lib.RULES, self.cfg.train.loss_chunk)
        step = make_eval_step(loss_fn, self.tokenizer.eos_id)
        return jax.jit(step, in_shardings=(t.param_shardings, None), out_shardings=mesh_lib.replicated(t.mesh))

    @functools.cached_property
    def scorer(self):
        """Task scoring on the training mesh: the same program on every process of a pod."""
        t = self.session
        return tasks.make_scorer(make_forward(t.spec.graphdef, t.mesh, mesh_lib.RULES), t.seq_len, t.batch_size,
                                 place=t.place_full_batch, out_sharding=mesh_lib.replicated(t.mesh))

    def __call__(self, params: Any, step: int, kind: str = "in-loop") -> dict[str, float]:
        """Evaluate, log one line, append to evals.jsonl and redraw eval.png."""
        results = self.evaluate(params)
        log(f"[eval] step {step}: {format_eval(results)}")
        write_eval(self.writer, {"step": step, **results}, kind=kind)
        return results

    def evaluate(self, params: Any) -> dict[str, float]:
        """Held-out loss / perplexity / bits per byte per source, plus the downstream tasks."""
        results = self.held_out(params)
        if self.cfg.eval.tasks:
            results.update(self.downstream(params))
        return results

    def held_out(self, params: Any) -> dict[str, float]:
        t = self.session
        return evaluation.evaluate(
            self.eval_step, params, self.run, t.sources,
            seq_len=t.seq_len, batch_size=t.batch_size, rows=t.rows, max_batches=self.cfg.eval.max_batches,
            to_global=t.to_global,
        )

    def downstream(self, params: Any) -> dict[str, float]:
        paths = tasks.builtin_task_paths(self.run) + [epath.Path(p) for p in self.cfg.eval.task_files]
        results = {}
        for path in paths:
            if not path.exists():
                continue
            examples = tasks.read_task(path)
            if not examples:  # a built-in task the held-out text gave no example for: no score, not 0
                continue
            scores = tasks.evaluate_task(self.scorer, params, self.tokenizer, examples)
            results[f"tasks/{path.stem}/acc"] = scores["acc"]
            results[f"tasks/{path.stem}/acc_norm"] = scores["acc_norm"]
        return results

    def unigram_baseline(self) -> float:
        """Cross-entropy of train-split unigram frequencies on the eval tokens: the bar to clear."""
        t = self.session
        return evaluation.unigram_baseline(self.run, t.sources, self.cfg.model.vocab_size, seq_len=t.seq_len,
                                           batch_size=t.batch_size, max_batches=self.cfg.eval.max_batches)
