import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtrain.evaluate import tasks
from jaxtrain.models import ModelConfig, Transformer
from jaxtrain import pipeline
from jaxtrain.rundir import RunDir
from jaxtrain.train.step import make_forward

from conftest import tiny_config


def test_scorer_matches_the_full_forward_pass():
    cfg = ModelConfig(vocab_size=50, num_layers=1, embed_dim=16, num_heads=2, num_kv_heads=2, mlp_dim=32, max_seq_len=16)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    score = tasks.make_scorer(make_forward(graphdef, None, None), seq_len=16, batch_size=3)
    pairs = [([1, 5, 6, 7], [8, 9]), ([1, 4], [10, 11, 12]), ([1] + list(range(2, 30)), [40])]  # last one truncated
    got = score(params, pairs)
    for (ctx, cont), (lp, _) in zip(pairs, got):
        ids = (ctx + cont)[-17:]
        logp = jax.nn.log_softmax(model(np.asarray([ids[:-1]])), axis=-1)[0]
        expected = sum(float(logp[len(ids) - 1 - len(cont) + j, cont[j]]) for j in range(len(cont)))
        assert lp == pytest.approx(expected, abs=1e-4)


def test_builtin_tasks_come_from_held_out_text_and_run_in_the_loop(fresh_run):
    tasks.prepare_tasks(fresh_run, tiny_config().eval.task_examples, 0)
    held_out = "\n".join(json.loads(line)["text"] for p in RunDir(fresh_run).clean.glob("*.validation*.jsonl")
                          for line in p.read_text().splitlines())
    for name in tasks.BUILTIN_TASKS:
        examples = tasks.read_task(RunDir(fresh_run).tasks / f"{name}.jsonl")
        assert len(examples) >= 10
        for ex in examples[:10]:
            assert len(ex["choices"]) == 4 and 0 <= ex["label"] < 4
            answer = ex["choices"][ex["label"]].strip()
            assert answer in held_out
    result = pipeline.train(tiny_config("train.steps=2", "eval.every_steps=2", "checkpoint.every_steps=2"), fresh_run)
    for name in tasks.BUILTIN_TASKS:
        assert 0.0 <= result["eval"][f"tasks/{name}/acc"] <= 1.0


def test_a_model_that_knows_the_answer_scores_100_percent(tmp_path):
    """acc uses summed log-likelihood; a task whose right answer is the model's own greedy continuation."""
    cfg = ModelConfig(vocab_size=64, num_layers=1, embed_dim=16, num_heads=2, num_kv_heads=2, mlp_dim=32, max_seq_len=32)
    model = Transformer(cfg, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)

    class Ids:  # a stand-in tokenizer: text is space-separated ids
        bos_id = 1

        def encode(self, text):
            return [int(t) for t in text.split()]

    score = tasks.make_scorer(make_forward(graphdef, None, None), seq_len=32, batch_size=4)
    examples = []
    for seed in range(5):
        ctx = [int(x) for x in np.random.default_rng(seed).integers(4, 64, size=6)]
        logits = model(np.asarray([[Ids.bos_id, *ctx]]))[0, -1]
        best, worst = int(np.argmax(logits)), int(np.argmin(logits))
        examples.append({"context": " ".join(map(str, ctx)), "choices": [f" {worst}", f" {best}"], "label": 1})
    assert tasks.evaluate_task(score, params, Ids(), examples)["acc"] == 1.0


def test_lm_eval_adapter_offline(fresh_run):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from jaxtrain.evaluate.lm_eval_adapter import JaxtrainLM

    pipeline.train(tiny_config("train.steps=2", "eval.every_steps=100", "checkpoint.every_steps=2"), fresh_run)
    lm = JaxtrainLM(str(fresh_run), batch_size=4)
    reqs = [Instance("loglikelihood", {}, ("def f(x):\n    return", " x"), 0),
            Instance("loglikelihood", {}, ("def f(x):\n    return", " zzzzqqq"), 1)]
    (lp_a, _), (lp_b, _) = lm.loglikelihood(reqs)
    assert lp_a < 0 and lp_b < 0 and lp_a != lp_b
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("import os\n" * 40,), 0)])
    assert rolling[0] < 0
    text = lm.generate_until([Instance("generate_until", {}, ("def ", {"until": ["\n\n"], "max_gen_toks": 8}), 0)])
    assert isinstance(text[0], str)
    assert "jaxtrain" in lm_eval.api.registry.MODEL_REGISTRY


@pytest.mark.slow  # tests/test_lm_eval_parity.py runs simple_evaluate on a local task in the default suite
def test_lm_eval_simple_evaluate_runs_a_local_task(fresh_run, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from jaxtrain.evaluate.lm_eval_adapter import JaxtrainLM

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks.prepare_tasks(fresh_run, tiny_config().eval.task_examples, 0)
    pipeline.train(tiny_config("train.steps=2", "eval.every_steps=100", "checkpoint.every_steps=2"), fresh_run)
    data = RunDir(fresh_run).tasks / "next_line.jsonl"
    task_dir = tmp_path / "lm_eval_tasks"
    task_dir.mkdir()
    (task_dir / "local.yaml").write_text(
        "task: jaxtrain_next_line\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    results = lm_eval.simple_evaluate(
        model=JaxtrainLM(str(fresh_run), batch_size=8), tasks=["jaxtrain_next_line"],
        task_manager=TaskManager(include_path=str(task_dir)), limit=16,
    )
    acc = results["results"]["jaxtrain_next_line"]["acc,none"]
    assert 0.0 <= acc <= 1.0
