"""Run directory <-> Hugging Face directory, with a model card that carries the data's provenance.

Whoever builds on a base model inherits its corpus, so an export carries the
run's data card (export.card: sources, licenses, curation, tokens,
decontamination, the provenance chain) beside the weights, and a README.md
that the Hub reads (YAML metadata: license, base_model, language, tags) with
the evaluation of the exported step and the training config.

The tokenizer travels both ways in the files transformers reads (tokenizer.model
with a tokenizer_config.json, or tokenizer.json), and config.json carries its
BOS/EOS ids.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil

import jax
import numpy as np
import yaml
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxtrain import runlock, yamlconf
from jaxtrain.config import RunConfig, save_config, to_dict
from jaxtrain.data import stages
from jaxtrain.data import tokenizer as tok
from jaxtrain.export import card, hf
from jaxtrain.models.transformer import execution_fields
from jaxtrain.rundir import (
    HF_TOKENIZER_CONFIG,
    HF_TOKENIZER_FILE,
    SENTENCEPIECE_FILE,
    RunDir,
)
from jaxtrain.train.checkpoint import checkpoint_meta
from jaxtrain.train.metrics import latest_per_step
from jaxtrain.train.trainer import build_trainer, load_params
from jaxtrain.utils import log

def _eval_at(run_dir: str | RunDir, step: int) -> dict:
    """The evaluation of the exported step, in-loop or offline (evals.jsonl; the last line for it: a resume or
    a later `jaxtrain eval` may repeat a step), or {}."""
    return latest_per_step(RunDir(run_dir).evals, lambda r: "eval/loss" in r).get(step, {})


def tokenizer_description(cfg: RunConfig, run_dir: str | RunDir) -> str:
    path = RunDir(run_dir).tokenizer
    if path.name == HF_TOKENIZER_FILE:
        return f"Hugging Face tokenizer.json, {cfg.model.vocab_size} model vocabulary"
    if cfg.tokenizer.model_file:
        return f"sentencepiece model from {cfg.tokenizer.model_file}, {cfg.model.vocab_size} model vocabulary"
    return f"sentencepiece {cfg.tokenizer.model_type}, {cfg.model.vocab_size} pieces"


def model_card(cfg: RunConfig, run_dir: str | RunDir, step: int, fingerprint: str, data: dict) -> str:
    """README.md for the Hub: YAML metadata (card.front_matter), what the model is, its evaluation at this step,
    the data card, the training config."""
    ev = _eval_at(run_dir, step)
    seen = step * cfg.tokens_per_step
    base = data["base_model"]
    lines = [
        "---", yaml.safe_dump(card.front_matter(data), sort_keys=False).strip(), "---",
        f"# {cfg.name}: jaxtrain base model, step {step}",
        "",
        (f"Continued pretraining of `{base['source']}` (weights sha256 `{base['weights_sha256'][:16]}`, license: "
         f"{base['license']}): its capabilities come from its own pretraining; jaxtrain trained it {step} more steps "
         f"({seen:,} tokens) on the data below." if base else
         f"Trained with jaxtrain for {step} steps ({seen:,} tokens seen) of {cfg.train.steps} planned."),
        f"Tokenizer: {tokenizer_description(cfg, run_dir)}, fingerprint `{fingerprint}`.",
        "",
        f"## Evaluation at step {step}",
        "",
    ]
    if ev:
        lines += ["- " + ", ".join(f"{k} = {v:.4f}" for k, v in ev.items()
                                   if k.startswith(("eval/", "tasks/")) and isinstance(v, float))]
    else:
        lines += [f"- none recorded for step {step} (`jaxtrain eval --run-dir RUN --step {step}` records one)"]
    lines += ["", card.render(data).replace("# Data card", "## Data card", 1).replace("\n## ", "\n### "),
              "## Training config", "", "```yaml", yamlconf.dump(cfg).strip(), "```", "",
              f"Machine-readable: `{card.CARD_JSON}` (the data card) and `{EXPORT_MARKER}` (this export)."]
    return "\n".join(lines) + "\n"


def export_tokenizer(run: RunDir, out_dir: pathlib.Path, max_len: int) -> tok.Tokenizer:
    """The run's tokenizer in the files transformers' AutoTokenizer reads, encoding as jaxtrain does.

    A Hugging Face tokenizer goes out as it came in (tokenizer.json and the config naming its special
    tokens). A sentencepiece model goes out as tokenizer.model with a LlamaTokenizer config whose
    add_prefix_space follows the model: jaxtrain trains without a dummy prefix, and transformers would
    otherwise add one (and strip a leading space when decoding)."""
    tokenizer = tok.load(run.tokenizer)
    if isinstance(tokenizer, tok.HFTokenizer):
        tok.install_tokenizer(run.tokenizer, out_dir)  # tokenizer.json and the files naming its special tokens
        return tokenizer
    shutil.copyfile(run.tokenizer, out_dir / SENTENCEPIECE_FILE)
    sp = tokenizer.sp
    (out_dir / HF_TOKENIZER_CONFIG).write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
        "unk_token": sp.id_to_piece(sp.unk_id()) if sp.unk_id() >= 0 else None,
        "pad_token": sp.id_to_piece(sp.pad_id()) if sp.pad_id() >= 0 else None,
        "add_bos_token": True, "add_eos_token": False,  # jaxtrain's documents start with BOS
        "add_prefix_space": tokenizer.add_dummy_prefix, "legacy": False,
        "clean_up_tokenization_spaces": False,  # decode returns the text as encoded, like jaxtrain's
        # "<s>" written in a document is text to sentencepiece (control pieces are never parsed from text), as
        # jaxtrain trained on it; transformers would otherwise read it as the BOS token.
        "split_special_tokens": True,
        "model_max_length": max_len,
    }, indent=2))
    return tokenizer


EXPORT_MARKER = "provenance.json"  # written into every export: a directory holding it may be replaced


def export_run(cfg: RunConfig, run_dir: str | RunDir, out_dir: pathlib.Path, step: int | None = None) -> pathlib.Path:
    run = RunDir(run_dir)
    hf.architecture(cfg.model)  # refuse unsupported architectures before restoring anything
    _, params, step = load_params(cfg, run, step)
    tensors = hf.to_hf_tensors(cfg.model, jax.device_get(params))
    final = pathlib.Path(out_dir)
    if final.exists() and any(final.iterdir()) and not (final / EXPORT_MARKER).exists():
        raise hf.ExportError(f"--out {final}: exists and is not a jaxtrain export (no {EXPORT_MARKER}); nothing was "
                             "written. Name a new directory, or empty this one.")
    # Written aside, then swapped in whole: no stale file of an earlier export survives (transformers would
    # read an old tokenizer.json before the new tokenizer.model), and a failure leaves `final` as it was.
    out_dir = final.parent / f".{final.name}.partial"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    try:
        _write_export(cfg, run, step, tensors, out_dir)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    out_dir.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _write_export(cfg: RunConfig, run: RunDir, step: int, tensors: dict, out_dir: pathlib.Path) -> None:
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt", "jaxtrain_step": str(step)})
    (out_dir / "model.safetensors").chmod(0o644)  # safetensors writes 0600; the export's other files are 0644
    tokenizer = export_tokenizer(run, out_dir, cfg.model.max_seq_len)
    (out_dir / "config.json").write_text(json.dumps(hf.hf_config(cfg.model, tokenizer.bos_id, tokenizer.eos_id),
                                                    indent=2))
    fingerprint = tokenizer.fingerprint()
    data = card.write(cfg, run, out_dir)
    (out_dir / EXPORT_MARKER).write_text(json.dumps(
        {"base_model": data["base_model"], "sources": data["sources"], "chain": data["chain"],
         "tokenizer_fingerprint": fingerprint, "step": step, "tokens_seen": step * cfg.tokens_per_step,
         "eval": _eval_at(run, step)}, indent=2))
    (out_dir / "README.md").write_text(model_card(cfg, run, step, fingerprint, data))


def read_hf_config(hf_dir: pathlib.Path) -> dict:
    path = pathlib.Path(hf_dir) / "config.json"
    if not path.exists():
        raise hf.MissingFileError(f"{hf_dir}: no config.json; give a Hugging Face model directory.")
    return json.loads(path.read_text())


SAFETENSORS_FILE, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"  # what transformers reads


def weight_files(hf_dir: pathlib.Path) -> dict[str, list[str] | None]:
    """The weight files transformers would read, and for each the tensors to take from it (None: all):
    `model.safetensors`, else the files `model.safetensors.index.json` maps tensors to. Any other
    *.safetensors file (a backup, a stray shard) is never read; a directory holding both forms, or only
    other files, is refused."""
    hf_dir = pathlib.Path(hf_dir)
    single, index = hf_dir / SAFETENSORS_FILE, hf_dir / SAFETENSORS_INDEX
    present = sorted(p.name for p in hf_dir.glob("*.safetensors"))
    if single.exists() and index.exists():
        raise hf.MissingFileError(f"{hf_dir}: holds both {SAFETENSORS_FILE} and {SAFETENSORS_INDEX}; which weights "
                                  "are the model's is ambiguous. Remove the one that is not.")
    if single.exists():
        return {SAFETENSORS_FILE: None}
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        by_file: dict[str, list[str]] = {}
        for tensor, name in sorted(weight_map.items()):
            by_file.setdefault(name, []).append(tensor)
        missing = sorted(n for n in by_file if not (hf_dir / n).exists())
        if not by_file or missing:
            raise hf.MissingFileError(f"{index}: " + (f"names {missing}, which are not in {hf_dir}; copy them there."
                                                      if missing else "has no weight_map; rewrite it with transformers."))
        return by_file
    if present:
        raise hf.MissingFileError(f"{hf_dir}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}, only {present}; "
                                  f"transformers reads one of those two: rename the model's file to {SAFETENSORS_FILE}.")
    raise hf.MissingFileError(f"{hf_dir}: no *.safetensors files (PyTorch .bin checkpoints are not read: no pickle).")


def load_hf_tensors(hf_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """The tensors of the weight files transformers would read (`weight_files`), as float32 numpy.

    Read through safetensors' Flax loader on the host CPU: its numpy loader cannot hold bfloat16
    (the dtype Llama 3 checkpoints ship in), and no accelerator memory is touched."""
    chosen = weight_files(hf_dir)
    ignored = sorted({p.name for p in pathlib.Path(hf_dir).glob("*.safetensors")} - set(chosen))
    if ignored:
        log(f"[import-hf] not read (transformers would not read them either): {ignored}")
    tensors: dict[str, np.ndarray] = {}
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        for name, wanted in chosen.items():
            with safe_open(str(pathlib.Path(hf_dir) / name), framework="flax") as st:
                for key in (st.keys() if wanted is None else wanted):
                    tensors[key] = np.asarray(st.get_tensor(key), dtype=np.float32)
    return tensors


def load_hf_dir(hf_dir: pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    return read_hf_config(hf_dir), load_hf_tensors(hf_dir)


def import_hf(hf_dir: pathlib.Path, base: RunConfig, run_dir: pathlib.Path,
              ignore_fields: tuple[str, ...] = (), repo_id: str | None = None) -> RunConfig:
    """A new run directory whose step-0 checkpoint holds the Hugging Face Llama weights and whose tokenizer
    is the directory's own (tokenizer.json or tokenizer.model; BOS/EOS ids come from it).

    Exact or refused: every config.json field is honoured or named in an ExportError (see
    hf.model_config_from_hf); the tensors must be exactly those the config implies."""
    run = RunDir(run_dir)
    with runlock.writer(run):  # a writer of the run directory, like train
        return _import_into(hf_dir, base, run, ignore_fields, repo_id)


def _import_into(hf_dir: pathlib.Path, base: RunConfig, run: RunDir, ignore_fields: tuple[str, ...],
                 repo_id: str | None) -> RunConfig:
    if run.checkpoints.exists() and any(p.name.isdigit() for p in run.checkpoints.iterdir()):
        raise hf.ExportError(f"--run-dir {run}: already holds checkpoints; import into a new run directory "
                             "(nothing was written).")
    run_choices = {k: getattr(base.model, k) for k in execution_fields()}  # how the base run computes
    model_cfg = hf.model_config_from_hf(read_hf_config(hf_dir), ignore_fields, param_dtype=base.model.param_dtype,
                                        **run_choices)
    params_np = hf.from_hf_tensors(model_cfg, load_hf_tensors(hf_dir))
    tok_path = tok.install_tokenizer(tok.tokenizer_file(hf_dir), run.tokenizer_dir)
    tokenizer = tok.load(tok_path)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise hf.ExportError(f"{tok_path}: {tokenizer.vocab_size} tokens, more than the model's vocab_size "
                             f"{model_cfg.vocab_size} in {hf_dir}/config.json.")
    cfg = dataclasses.replace(
        base,
        model=model_cfg,
        tokenizer=dataclasses.replace(base.tokenizer, vocab_size=model_cfg.vocab_size, model_file=str(tok_path)),
        data=dataclasses.replace(base.data, seq_len=min(base.data.seq_len, model_cfg.max_seq_len)),
        run_dir=str(run),
    )
    trainer = build_trainer(cfg, run)
    fresh = trainer.init_state()
    params = jax.tree.map(lambda x, sh: jax.device_put(x, sh), params_np, trainer.shardings.params)
    state = fresh.replace(params=params, opt_state=trainer.tx.init(params))
    ckpt = trainer.checkpointer()
    meta = checkpoint_meta(0, to_dict(cfg), tokenizer.fingerprint(), cfg.tokens_per_step,
                           imported_from=str(hf_dir))
    ckpt.save(0, state, None, meta, force=True)
    ckpt.close()
    run.base_model.write_text(json.dumps(base_model_record(hf_dir, repo_id), indent=1))
    save_config(cfg, run.config)
    return cfg


def base_model_record(hf_dir: pathlib.Path, repo_id: str | None = None) -> dict:
    """What a continued-pretraining run starts from: the directory, its Hub repository id (given, or read from a
    Hub cache path `models--ORG--NAME/snapshots/...`, or config.json's `_name_or_path`), the digest of the weight
    files read, and the metadata its model card declares (YAML front matter of README.md), license first."""
    hf_dir = pathlib.Path(hf_dir)
    front: dict = {}
    readme = hf_dir / "README.md"
    if readme.exists() and readme.read_text().startswith("---"):
        front = yaml.safe_load(readme.read_text().split("---", 2)[1]) or {}
    files = sorted(weight_files(hf_dir))
    cached = re.search(r"models--([\w.-]+)--([\w.-]+)/snapshots/", str(hf_dir.resolve()))
    name = str(read_hf_config(hf_dir).get("_name_or_path", ""))
    named = name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not pathlib.Path(name).exists() else None
    return {"source": str(hf_dir.resolve()),
            "repo_id": repo_id or (f"{cached.group(1)}/{cached.group(2)}" if cached else named),
            "weight_files": files, "weights_sha256": stages.file_digest(*(hf_dir / f for f in files), length=64),
            "license": str(front.get("license", "not declared (no README.md front matter)")),
            "card_metadata": json.loads(json.dumps(front, default=str))}
