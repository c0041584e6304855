"""An lm-evaluation-harness `LM` backed by a jaxtrain checkpoint.

    from jaxtrain.evaluate.lm_eval_adapter import JaxtrainLM
    import lm_eval
    lm_eval.simple_evaluate(model=JaxtrainLM("runs/demo"), tasks=["hellaswag"])   # needs network for datasets

or from the shell: `lm_eval --model jaxtrain --model_args run_dir=runs/demo --tasks ...` after
`import jaxtrain.evaluate.lm_eval_adapter` registers it. Importing this module requires lm_eval
(`pip install lm-eval`); nothing else in jaxtrain does.
"""

from __future__ import annotations

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from jaxtrain.config import load_run_config
from jaxtrain.data import tokenizer as tok
from jaxtrain.evaluate.sampling import generate
from jaxtrain.evaluate.tasks import make_scorer
from jaxtrain.rundir import RunDir
from jaxtrain.train.step import make_forward
from jaxtrain.train.trainer import load_params


@register_model("jaxtrain")
class JaxtrainLM(LM):
    def __init__(self, run_dir: str, step: int | None = None, batch_size: int | str = 8, max_gen_toks: int = 64,
                 **overrides) -> None:
        super().__init__()
        run = RunDir(run_dir)
        cfg = load_run_config(run.root, ["mesh.dcn=1", "mesh.data=-1", "mesh.fsdp=1", "mesh.tensor=1"])
        self.trainer, self.params, self.step = load_params(cfg, run, step)
        self.sp = tok.load(run.tokenizer)
        self.seq_len = self.trainer.seq_len
        self.max_gen_toks = max_gen_toks
        self._score = make_scorer(make_forward(self.trainer.spec.graphdef, None, None), self.seq_len, int(batch_size))

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return [tok.BOS_ID, *self.sp.encode(context)], self.sp.encode(continuation)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self._score(self.params, [self._encode_pair(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Whole-text log-likelihood, in windows of seq_len tokens each conditioned on what precedes it."""
        out = []
        for r in requests:
            ids = self.sp.encode(r.args[0])
            pairs, start = [], 0
            while start < len(ids):
                end = min(start + self.seq_len // 2, len(ids))
                pairs.append(([tok.BOS_ID, *ids[max(0, start - self.seq_len // 2):start]], ids[start:end]))
                start = end
            out.append(sum(lp for lp, _ in self._score(self.params, pairs)))
        return out

    def generate_until(self, requests) -> list[str]:
        outputs = []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            ids = [tok.BOS_ID, *self.sp.encode(context)][-(self.seq_len // 2):]
            new = generate(self.trainer.spec.graphdef, self.params, [ids],
                           max_new_tokens=int(kwargs.get("max_gen_toks", self.max_gen_toks)),
                           temperature=float(kwargs.get("temperature", 0.0)), eos_id=tok.EOS_ID)[0]
            text = self.sp.decode(new)
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
        return outputs
