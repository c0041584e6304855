"""An lm-evaluation-harness `LM` backed by a jaxtrain checkpoint, scoring as lm-eval's own HF model does.

    from jaxtrain.evaluate.lm_eval_adapter import JaxtrainLM
    import lm_eval
    lm_eval.simple_evaluate(model=JaxtrainLM("runs/demo"), tasks=["hellaswag"])   # needs network for datasets

or from the shell: `lm_eval --model jaxtrain --model_args run_dir=runs/demo --tasks ...` after
`import jaxtrain.evaluate.lm_eval_adapter` registers it. Importing this module requires lm_eval
(`pip install lm-eval`); nothing else in jaxtrain does.

Request handling is lm-eval's, not a copy of it: `TemplateLM.loglikelihood` moves a context's trailing
spaces into the continuation, tokenizes context + continuation jointly and splits them, and handles
empty contexts; rolling log-likelihoods use lm-eval's `get_rolling_token_windows` and
`make_disjoint_window` with BOS as the prefix token (so mid-document windows carry no BOS); tokenization
adds BOS as the exported tokenizer does for HFLM. The scores equal HFLM's on `jaxtrain export`'s output
(tested to 1e-4).
"""

from __future__ import annotations

import jax
import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from jaxtrain.config import load_run_config
from jaxtrain.data import tokenizer as tok
from jaxtrain.evaluate.sampling import generate
from jaxtrain.evaluate.tasks import make_scorer
from jaxtrain.rundir import RunDir
from jaxtrain.train.step import make_forward
from jaxtrain.train.trainer import load_params


@register_model("jaxtrain")
class JaxtrainLM(TemplateLM):
    def __init__(self, run_dir: str, step: int | None = None, batch_size: int | str = 8, max_batch_size: int = 64,
                 max_length: int | None = None, max_gen_toks: int = 256, add_bos_token: bool | None = None,
                 device: str | None = None) -> None:
        """batch_size: rows per forward pass, or "auto" / "auto:N" (HFLM's spelling): the largest power of two
        up to max_batch_size that runs at the longest request's length. max_length: the context HFLM reads from
        the exported config.json (model.max_seq_len) unless given. add_bos_token: None = as transformers'
        tokenizer for the export does (HFLM's default). device: accepted for lm-eval's CLI, unused (JAX places
        the computation)."""
        super().__init__()
        del device
        run = RunDir(run_dir)
        cfg = load_run_config(run.root, ["mesh.dcn=1", "mesh.data=-1", "mesh.fsdp=1", "mesh.tensor=1"])
        self.session, self.params, self.step = load_params(cfg, run, step)
        self.tokenizer = tok.load(run.tokenizer)
        self._max_length = int(max_length or cfg.model.max_seq_len)
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = self.tokenizer.exported_adds_bos if add_bos_token is None else add_bos_token
        self.max_batch_size = int(max_batch_size)
        self.batch_size = "auto" if str(batch_size).startswith("auto") else int(batch_size)
        self._auto_batch: dict[int, int] = {}  # row length -> detected batch size
        self._score = make_scorer(make_forward(self.session.spec.graphdef, None, None), self._max_length,
                                  self.max_batch_size if self.batch_size == "auto" else self.batch_size)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.bos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """As HFLM.tok_encode on the exported tokenizer: BOS first when that tokenizer adds it (or as
        add_bos_token says); a string that starts with the BOS token's text gets that token, not a second one."""
        if add_special_tokens is None:
            add_bos = self.add_bos_token
        else:  # the special tokens transformers' tokenizer adds: BOS if its post-processor adds it
            add_bos = add_special_tokens and self.tokenizer.exported_adds_bos
        bos_text = self.tokenizer.bos_token
        if add_special_tokens is None and bos_text and string.startswith(bos_text):
            ids = [self.tokenizer.bos_id, *self.tokenizer.encode(string[len(bos_text):])]
        else:
            ids = ([self.tokenizer.bos_id] if add_bos else []) + self.tokenizer.encode(string)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def _batch_size_for(self, length: int) -> int:
        """A fixed batch size, or for "auto" HFLM's search at the longest request: halve from max_batch_size
        until a forward pass of that many rows runs (an accelerator's out-of-memory error means too many).
        Remembered per power-of-two length, the row lengths the scorer compiles for."""
        if self.batch_size != "auto":
            return self.batch_size
        length = min(1 << max(length - 1, 0).bit_length(), self.max_length)
        if length not in self._auto_batch:
            size = self.max_batch_size
            while True:
                try:
                    self._score(self.params, [([self.prefix_token_id] * length, [self.prefix_token_id])] * size,
                                batch_size=size)
                    break
                except jax.errors.JaxRuntimeError as e:
                    if "RESOURCE_EXHAUSTED" not in str(e) or size == 1:
                        raise
                    size //= 2
            self._auto_batch[length] = size
        return self._auto_batch[length]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """((context, continuation), context_ids, continuation_ids) -> (logprob, is_greedy), scored longest
        first (as HFLM's Collator orders them, so a batch's rows have similar lengths)."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        pairs = [(requests[i][1], requests[i][2]) for i in order]
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        if not pairs:
            return results
        size = self._batch_size_for(min(len(pairs[0][0]) + len(pairs[0][1]) - 1, self.max_length))
        for start in range(0, len(pairs), size):
            scores = self._score(self.params, pairs[start:start + size], batch_size=size)
            for i, result in zip(order[start:start + size], scores):
                results[i] = result
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """HFLM's rolling windows: max_length tokens each, every token predicted once with as much context
        as fits; the first window is conditioned on BOS, the others on the text before them."""
        windows, owners = [], []
        for index, (string,) in enumerate(r.args for r in requests):
            for context, continuation in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owners.append(index)
        totals = np.zeros(len(requests))
        for index, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[index] += logprob
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, float(total))
        return [float(t) for t in totals]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or temperature) generation with the KV-cache sampler, cut at EOS and at each `until` string."""
        outputs = []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context, left_truncate_len=max(self.max_length - max_new, 1))
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            new = generate(self.session.spec.graphdef, self.params, [ids], max_new_tokens=max_new,
                           temperature=temperature, eos_id=self.eot_token_id)[0]
            text = self.tok_decode(new)
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", r.args, text)
        return outputs
