"""The stages wired together: what each `jaxtrain` command runs, as library calls.

    prepare(cfg, run)        curation, tokenizer, token shards, built-in tasks (process 0; others wait),
                             each an atomic stage skipped when done with the same inputs
    train(cfg, run)          the training loop with an Evaluator as its eval hook
    run(cfg, run)            all of the above, then the unigram comparison and a sample
    evaluate_checkpoint(...) `jaxtrain eval`;  sample(...) `jaxtrain sample`

Each takes the command's `runconfig.Resolved` (the config read and checked once, as the command
line passes it) or a plain (cfg, run_dir), which it resolves once itself. The mesh is built
first, so a config that cannot run on these devices is refused before any data work starts.
"""

from __future__ import annotations

import time
from typing import Any

import jax
from jax.experimental import multihost_utils

from jaxtrain import runconfig, runlock
from jaxtrain.config import RunConfig
from jaxtrain.data import prepare as data_prepare
from jaxtrain.data import stages
from jaxtrain.data import tokenizer as tok
from jaxtrain.errors import JaxtrainError
from jaxtrain.evaluate.evaluator import Evaluator
from jaxtrain.evaluate.sampling import generate
from jaxtrain.evaluate.tasks import prepare_tasks
from jaxtrain.rundir import RunDir
from jaxtrain.train import loop
from jaxtrain.train.metrics import MetricsWriter
from jaxtrain.train.trainer import ModelSession, build_mesh, build_session, load_params
from jaxtrain.utils import log


class DataNotPrepared(JaxtrainError):
    """A pod was started on a run directory whose data stages have not run."""


def prepare(cfg: RunConfig | runconfig.Resolved, run_dir: str | RunDir | None = None, through: str = "tasks") -> None:
    """The data stages up to `through` (curation, tokenizer, shards, tasks), each skipped when done
    with the same inputs; the config is resolved (checked against the run's, data inputs checked)
    once, unless it comes resolved, and recorded first. A pod does not curate or tokenize (its hosts
    would wait, accelerators idle, while one host does CPU work): it refuses unprepared data before
    any work."""
    resolved = runconfig.given(cfg, run_dir, data=True)
    with runlock.writer(resolved.run, primary=jax.process_index() == 0):
        _prepare(resolved, through)


def _prepare(resolved: runconfig.Resolved, through: str) -> None:
    cfg, run = resolved.cfg, resolved.run
    last = stages.STAGES.index(through)
    if jax.process_count() > 1:
        missing = data_prepare.missing_stages(run)
        if missing:
            raise DataNotPrepared(
                f"{run}: data stage(s) {', '.join(missing)} not done, and a pod does not prepare data. Run "
                f"`jaxtrain prepare`, `jaxtrain tokenizer` and `jaxtrain tokenize` with --run-dir {run} once from "
                "any machine (data.beam_options runs curation on Dataflow), then launch the pod again.")
        if jax.process_index() == 0 and last >= stages.STAGES.index("tasks"):
            prepare_tasks(run, cfg.eval.task_examples, cfg.data.shuffle_seed)  # seconds of work
        multihost_utils.sync_global_devices("jaxtrain:data-prepared")
        return
    if line := resolved.describe_changes():
        log(line)
    resolved.record_for_data()
    data_prepare.prepare_corpus(cfg.data, run, inputs_checked=True)
    if last >= stages.STAGES.index("tokenizer"):
        data_prepare.prepare_tokenizer(cfg.tokenizer, cfg.data, cfg.model.vocab_size, run)
    if last >= stages.STAGES.index("shards"):
        data_prepare.prepare_shards(cfg.data, run)
    if last >= stages.STAGES.index("tasks"):
        prepare_tasks(run, cfg.eval.task_examples, cfg.data.shuffle_seed)


def train(cfg: RunConfig | runconfig.Resolved, run_dir: str | RunDir | None = None, *, devices: list | None = None,
          prepare_data: bool = False, max_steps_this_run: int | None = None,
          fault_injector: loop.FaultInjector | None = None) -> dict:
    """Train with in-loop evaluation, the config resolved once (unless it comes resolved). With
    prepare_data the data stages run first (after the mesh checks)."""
    resolved = runconfig.given(cfg, run_dir)
    cfg, run_dir = resolved.cfg, resolved.run
    mesh = build_mesh(cfg, devices)
    with runlock.writer(run_dir, primary=jax.process_index() == 0):  # before anything is written
        if prepare_data:
            prepare(resolved)
        session = build_session(cfg, run_dir, mesh=mesh)  # the Trainer is built by the loop, once its plan is known
        writer = MetricsWriter.for_run(cfg, session.run)
        evaluator = Evaluator(session, writer)
        result = loop.run(session, evaluate=evaluator, metrics=writer, max_steps_this_run=max_steps_this_run,
                          fault_injector=fault_injector)
    return {**result, "evaluator": evaluator}


def run(cfg: RunConfig | runconfig.Resolved, run_dir: str | RunDir | None = None, *,
        max_steps_this_run: int | None = None) -> dict:
    """The whole pipeline on one config, then the comparison that says it learned something."""
    start = time.perf_counter()
    resolved = runconfig.given(cfg, run_dir)
    cfg, run_dir = resolved.cfg, resolved.run
    with runlock.writer(run_dir, primary=jax.process_index() == 0):  # the final eval writes evals.jsonl
        result = train(resolved, prepare_data=True, max_steps_this_run=max_steps_this_run)
        evaluator: Evaluator = result["evaluator"]
        final = result["eval"] or evaluator.evaluate(result["state"].params)
    unigram = evaluator.unigram_baseline()
    log(f"[result] {comparison(final['eval/loss'], unigram)}")
    print_samples(result["trainer"], result["state"].params, result["step"], [cfg.eval.sample_prompt])
    log(f"[result] run directory: {RunDir(run_dir)} | total time {time.perf_counter() - start:.0f}s")
    return result


def comparison(loss: float, unigram: float) -> str:
    """The run summary's one line: the model against the unigram baseline, worse said as worse."""
    gap = unigram - loss
    verdict = f"{gap:.4f} better" if gap > 0 else f"{-gap:.4f} WORSE: the model has not learned more than token frequencies"
    return f"held-out loss {loss:.4f} nats/token vs unigram baseline {unigram:.4f} ({verdict})"


def evaluate_checkpoint(cfg: RunConfig | runconfig.Resolved, run_dir: str | RunDir | None = None,
                        step: int | None = None) -> dict:
    """`jaxtrain eval`: a checkpoint's held-out loss and tasks, recorded as an offline eval. A run whose
    data is not prepared yet (a model just imported) prepares it first: the held-out split is the run's own."""
    resolved = runconfig.given(cfg, run_dir)
    if stages.marker(resolved.run, "shards") is None and jax.process_count() == 1:
        log(f"[eval] {resolved.run} has no token shards yet (an imported model, not trained on): preparing the "
            "run's data first, to evaluate on its held-out split")
        prepare(resolved)
    cfg, run_dir = resolved
    session, params, step = load_params(cfg, run_dir, step)
    writer = MetricsWriter.for_run(cfg, session.run)
    evaluator = Evaluator(session, writer)
    results = evaluator(params, step, kind="offline")
    writer.close()
    unigram = evaluator.unigram_baseline()
    log(f"[eval] unigram baseline on the same tokens: {unigram:.4f} nats/token; model: {results['eval/loss']:.4f}")
    return results


def print_samples(session: ModelSession, params: Any, step: int, prompts: list[str], *, tokens: int | None = None,
                  temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                  seed: int = 0) -> None:
    """Sample from params already in memory (shared by `sample` and the end of `run`)."""
    e = session.cfg.eval
    tokenizer = tok.load(session.run.tokenizer)
    outputs = generate(
        session.spec.graphdef, params, [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts],
        max_new_tokens=tokens or e.sample_tokens,
        temperature=e.temperature if temperature is None else temperature,
        top_k=e.top_k if top_k is None else top_k,
        top_p=e.top_p if top_p is None else top_p,
        seed=seed, eos_id=tokenizer.eos_id,
    )
    for prompt, ids in zip(prompts, outputs):
        log(f"--- sample (step {step}, prompt {prompt!r}) ---\n{prompt}{tokenizer.decode(ids)}\n---")


def sample(cfg: RunConfig | runconfig.Resolved, run_dir: str | RunDir | None, prompts: list[str],
           step: int | None = None, **options) -> None:
    cfg, run_dir = runconfig.given(cfg, run_dir)
    session, params, step = load_params(cfg, run_dir, step)
    print_samples(session, params, step, prompts or [cfg.eval.sample_prompt], **options)


__all__ = ["evaluate_checkpoint", "prepare", "print_samples", "run", "sample", "train"]
