"""The lm-eval adapter scores exactly as lm-evaluation-harness's own HF model (HFLM) does on the export."""

import json

import numpy as np
import pytest

from jaxtrain import pipeline
from jaxtrain.config import load_run_config
from jaxtrain.export.handoff import export_run
from jaxtrain.rundir import RunDir

from conftest import tiny_config

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("torch", reason="HFLM runs the exported model on CPU PyTorch")


@pytest.fixture(scope="module")
def both(prepared_run, tmp_path_factory):
    """(HFLM on the exported directory, JaxtrainLM on the run, run directory) after two training steps."""
    import shutil

    from lm_eval.models.huggingface import HFLM

    from jaxtrain.evaluate.lm_eval_adapter import JaxtrainLM

    run = tmp_path_factory.mktemp("lm_eval") / "run"
    for part in ("data", "tokenizer", "tasks"):
        shutil.copytree(prepared_run / part, run / part)
    pipeline.train(tiny_config("train.steps=2", "eval.every_steps=100", "checkpoint.every_steps=2"), run)
    out = export_run(load_run_config(run), run, run.parent / "hf")
    theirs = HFLM(pretrained=str(out), device="cpu", dtype="float32", batch_size=4)
    ours = JaxtrainLM(str(run), batch_size="auto", max_batch_size=8)
    return theirs, ours, run


def _instances(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihood_equals_hflm_with_trailing_spaces_and_empty_context(both):
    theirs, ours, _ = both
    pairs = [("x = ", "[1, 2, 3]"), ("def f(x):\n    return", " x"), ("import os\n", "import sys"),
             ("", "hello world"), ("The  ", "end."), ("class A:\n    def __init__(self):\n", "        pass"),
             ("long " * 80, " context")]  # the last one is cut from the left, as HFLM cuts it
    expected = theirs.loglikelihood(_instances("loglikelihood", pairs))
    got = ours.loglikelihood(_instances("loglikelihood", pairs))
    for (a, greedy_a), (b, greedy_b), pair in zip(expected, got, pairs):
        assert b == pytest.approx(a, abs=1e-4), pair
        assert greedy_a == greedy_b, pair
    assert ours.batch_size == "auto" and ours._auto_batch  # batch_size="auto" found a size


def test_rolling_loglikelihood_equals_hflm_over_several_windows(both):
    theirs, ours, run = both
    texts = [json.loads(line)["text"][:1500] for line in
             (RunDir(run).clean / "stdlib_docs.validation.jsonl").read_text().splitlines()[:3]]
    assert len(ours.tok_encode(texts[0])) > 3 * ours.max_length  # several windows each
    expected = theirs.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in texts]))
    got = ours.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in texts]))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-6)


def test_simple_evaluate_on_a_local_task_gives_hflms_per_choice_scores(both, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    theirs, ours, run = both
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    # next_line: contexts end in a newline (moved into the continuation); choices short enough for HFLM,
    # which refuses a continuation longer than the model's 64 positions.
    docs = [json.loads(line) for line in (RunDir(run).tasks / "next_line.jsonl").read_text().splitlines()]
    docs = [d for d in docs if max(len(ours.tok_encode(" " + c, add_special_tokens=False)) for c in d["choices"]) <= 48]
    docs = docs[:12]
    (task_dir / "next_line.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (task_dir / "local.yaml").write_text(
        "task: jaxtrain_next_line\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {task_dir / 'next_line.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n")
    scores = []
    for lm in (theirs, ours):
        results = lm_eval.simple_evaluate(model=lm, tasks=["jaxtrain_next_line"], log_samples=True,
                                          task_manager=TaskManager(include_path=str(task_dir)))
        samples = sorted(results["samples"]["jaxtrain_next_line"], key=lambda s: s["doc_id"])
        scores.append([float(r[0][0]) for s in samples for r in s["resps"]])
        assert 0.0 <= results["results"]["jaxtrain_next_line"]["acc,none"] <= 1.0
    assert len(scores[0]) == 4 * len(docs) >= 24
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-4, rtol=0)
