"""One config per run directory: the first command records it; later commands use it, or are
refused when they change what the run already depends on.

    resolve(config, overrides, run_dir)   the config a command runs with (the CLI's only entry)
    check(cfg, run)                       refuse a config the run directory cannot honour
    record_for_data(cfg, run)             the data stages record what they build from
    record(cfg, run)                      write RUN/config.yaml (atomically); the training path
                                          calls it once training has started with `cfg`

Given only `--run-dir RUN` (and key=value overrides), a command runs with RUN/config.yaml. A
command given a config that differs from the recorded one is checked against what the run
already holds:
  - settings a data stage reads (`DataConfig.curation_inputs`, the tokenizer section) are
    honoured by redoing that stage and every stage after it (the stage markers of
    `jaxtrain.data.stages` record their inputs); a new or changed source re-runs curation, the
    tokenizer, the shards and the tasks (the tasks also follow eval.task_examples);
  - except once training has started (a checkpoint past step 0): the model learned from the
    recorded data and tokenizer, so the command is refused with the differing keys;
  - everything else (train.steps, the optimizer, eval, the mesh, execution settings) is the
    training stage's to honour: resuming checks each checkpoint against the config itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxtrain.config import (
    RunConfig,
    load_config,
    load_run_config,
    save_config,
    to_dict,
)
from jaxtrain.errors import ConfigError
from jaxtrain.rundir import RunDir

DEFAULT_PRESET = "demo"  # what a command runs with when given neither --config nor a recorded run


def recorded(run: RunDir) -> RunConfig | None:
    """The run directory's recorded config, or None when it has none."""
    run = RunDir(run)
    return load_run_config(run.root) if run.config.exists() else None


def resolve(config: str | None, overrides: list[str] | tuple[str, ...], run_dir: str | None
            ) -> tuple[RunConfig, RunDir]:
    """The config a command runs with, and its run directory; refused (ConfigError) before any work
    when the run directory cannot honour it."""
    if config is None and run_dir is not None:
        run = RunDir(run_dir)
        if run.config.exists():
            cfg = load_run_config(run.root, overrides)
        elif _holds_outputs(run):
            raise ConfigError(f"--run-dir {run}: the run directory has data or checkpoints but no recorded config "
                              f"({run.config}); give --config with the config it was made with.")
        else:
            cfg = load_config(DEFAULT_PRESET, overrides)
    else:
        cfg = load_config(config or DEFAULT_PRESET, overrides)
    run = RunDir(run_dir or cfg.run_dir)
    check(cfg, run)
    return cfg, run


def check(cfg: RunConfig, run: RunDir) -> None:
    """Refuse a config that changes the data or tokenizer of a run whose training has started."""
    old = recorded(run)
    if old is None:
        return
    changed = stage_keys(old, cfg)
    steps = trained_steps(run)
    if changed and steps:
        detail = "; ".join(f"{key}: {_short(a)} -> {_short(b)}" for key, (a, b) in changed.items())
        raise ConfigError(
            f"{', '.join(changed)}: differ from {RunDir(run).config}, and the run has trained to step {steps[-1]} "
            f"on the recorded data and tokenizer ({detail}). Drop these changes to continue this run, "
            "or start a new run directory."
        )


def record(cfg: RunConfig, run: RunDir) -> None:
    """Write RUN/config.yaml, replacing the previous one in one step."""
    save_config(cfg, RunDir(run).config)


def record_for_data(cfg: RunConfig, run: RunDir) -> None:
    """What the data stages record before they run: the whole config while the run has no
    checkpoint; after that only the data and tokenizer sections, and only when they change (the
    rest is recorded by the training path once training has started with it)."""
    run = RunDir(run)
    old = recorded(run)
    if old is None or not _checkpoint_dirs(run):
        if old != cfg:
            record(cfg, run)
    elif stage_keys(old, cfg):
        check(cfg, run)
        record(dataclasses.replace(old, data=cfg.data, tokenizer=cfg.tokenizer), run)


def describe_changes(cfg: RunConfig, run: RunDir) -> str | None:
    """A log line naming the settings that differ from the recorded config, or None."""
    old = recorded(run)
    changed = changed_keys(old, cfg) if old is not None else {}
    changed.pop("run_dir", None)
    changed.pop("name", None)
    if not changed:
        return None
    data = [k for k in changed if k in stage_keys(old, cfg)]
    return (f"[config] differs from {RunDir(run).config}: {', '.join(changed)}"
            + (f" (data stages that read {', '.join(data)} are redone)" if data else ""))


def stage_keys(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """The settings data stages read that differ: dotted key -> (old, new)."""
    diff: dict[str, tuple[Any, Any]] = {}
    _diff(old.data.curation_inputs(), new.data.curation_inputs(), "data", diff)
    _diff(old.tokenizer.inputs(), new.tokenizer.inputs(), "tokenizer", diff)
    return diff


def changed_keys(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Every setting that differs: dotted key -> (old, new)."""
    diff: dict[str, tuple[Any, Any]] = {}
    _diff(to_dict(old), to_dict(new), "", diff)
    return diff


def _diff(a: Any, b: Any, key: str, out: dict) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in dict.fromkeys([*a, *b]):
            _diff(a.get(k), b.get(k), f"{key}.{k}" if key else k, out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{key}[{i}]", out)
    elif _plain(a) != _plain(b):
        out[key] = (a, b)


def _plain(value: Any) -> Any:
    return list(map(_plain, value)) if isinstance(value, (list, tuple)) else value


def _short(value: Any, width: int = 60) -> str:
    text = repr(_plain(value))
    return text if len(text) <= width else text[: width - 3] + "..."


def _checkpoint_dirs(run: RunDir) -> list[int]:
    """Steps of the committed checkpoints (Orbax names a committed step's directory by the step)."""
    directory = RunDir(run).checkpoints
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def trained_steps(run: RunDir) -> list[int]:
    """Checkpointed steps past 0: training has started (an imported model's step 0 has not)."""
    return [s for s in _checkpoint_dirs(run) if s > 0]


def _holds_outputs(run: RunDir) -> bool:
    return any(p.exists() for p in (run.data, run.tokenizer_dir, run.checkpoints, run.tasks))
