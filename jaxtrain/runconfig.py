"""One config per run directory: the first command records it; later commands use it, or are
refused when they change what the run already depends on.

    resolve(config, overrides, run_dir)   the config a command runs with, as a `Resolved` (every command's
                                          one entry: RUN/config.yaml is read once, the checks run once)
    given(cfg, run_dir)                   the same for a library call's (cfg, run_dir); a Resolved passes through
    check(cfg, run)                       refuse a config the run directory cannot honour
    Resolved.record_for_data()            the data stages record what they build from
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

import copy
import dataclasses
from typing import Any, Iterator

import jax

from jaxtrain import yamlconf
from jaxtrain.config import RunConfig, from_dict, load_config, preset_path, save_config, to_dict
from jaxtrain.data import prepare as data_prepare
from jaxtrain.errors import ConfigError
from jaxtrain.rundir import RunDir

DEFAULT_PRESET = "demo"  # what a command runs with when given neither --config nor a recorded run


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A command's config, resolved once (`resolve`, `given`) and handed to every stage it runs.

    `recorded` is RUN/config.yaml as read at resolution (None: the run has none yet); `check`
    has passed against it. `inputs_checked`: the data inputs (source globs, tokenizer file) were
    checked too (`data_prepare.check_inputs`), as the commands that run data stages ask.
    Unpacks as `cfg, run = resolve(...)`."""

    cfg: RunConfig
    run: RunDir
    recorded: RunConfig | None
    inputs_checked: bool = False

    def __iter__(self) -> Iterator:
        return iter((self.cfg, self.run))

    def with_inputs_checked(self) -> "Resolved":
        """The data inputs checked, once (a pod does not prepare data: it checks none)."""
        if self.inputs_checked:
            return self
        if jax.process_count() == 1:
            data_prepare.check_inputs(self.cfg.data, self.cfg.tokenizer, self.run)
        return dataclasses.replace(self, inputs_checked=True)

    def describe_changes(self) -> str | None:
        return _describe_changes(self.cfg, self.run, self.recorded)

    def record_for_data(self) -> None:
        _record_for_data(self.cfg, self.run, self.recorded)


def read_recorded(run: RunDir) -> dict | None:
    """RUN/config.yaml's values (with its `base:` chain), or None when the run has none. The only
    reader of a run's recorded config here."""
    run = RunDir(run)
    return yamlconf.load_yaml(run.config, preset_path) if run.config.exists() else None


def recorded(run: RunDir) -> RunConfig | None:
    """The run directory's recorded config, or None when it has none."""
    values = read_recorded(run)
    return None if values is None else from_dict(values)


def resolve(config: str | None, overrides: list[str] | tuple[str, ...], run_dir: str | None, *,
            data: bool = False, default: str = DEFAULT_PRESET, require_recorded: bool = False) -> Resolved:
    """The config a command runs with, and its run directory, read and checked once; refused
    (ConfigError) before any work when the run directory cannot honour it. With `data` the data
    inputs are checked too. `require_recorded`: a command that reads a finished run (export) refuses
    a directory without RUN/config.yaml."""
    run = RunDir(run_dir) if run_dir else None
    values = read_recorded(run) if run is not None else None
    old = None if values is None else from_dict(copy.deepcopy(values))
    if config is None and run is not None and values is not None:
        cfg = from_dict(yamlconf.apply_overrides(values, overrides))
    elif config is None and run is not None and _holds_outputs(run):
        raise ConfigError(f"--run-dir {run}: the run directory has data or checkpoints but no recorded config "
                          f"({run.config}); give --config with the config it was made with.")
    elif config is None and run is not None and require_recorded:
        raise ConfigError(f"--run-dir {run}: no recorded config ({run.config}); is it a jaxtrain run directory?")
    else:
        cfg = load_config(config or default, overrides)
    if run is None:  # the config names its run directory
        run = RunDir(cfg.run_dir)
        old = recorded(run)
    return _resolved(cfg, run, old, data)


def given(cfg: RunConfig | Resolved, run_dir: str | RunDir | None = None, *, data: bool = False) -> Resolved:
    """A library call's (cfg, run_dir) resolved once, like a command's config; a Resolved passes through
    (its inputs checked now if `data` asks and they were not)."""
    if isinstance(cfg, Resolved):
        return cfg.with_inputs_checked() if data else cfg
    run = RunDir(run_dir if run_dir is not None else cfg.run_dir)
    return _resolved(cfg, run, recorded(run), data)


def _resolved(cfg: RunConfig, run: RunDir, old: RunConfig | None, data: bool) -> Resolved:
    _check(cfg, run, old)
    resolved = Resolved(cfg, run, old)
    return resolved.with_inputs_checked() if data else resolved


def check(cfg: RunConfig, run: RunDir) -> None:
    """Refuse a config that changes the data or tokenizer of a run whose training has started."""
    _check(cfg, run, recorded(run))


def _check(cfg: RunConfig, run: RunDir, old: RunConfig | None) -> None:
    if old is None:
        return
    changed = stage_keys(old, cfg)
    steps = trained_steps(run)
    tokenizer_keys = [k for k in changed if k.startswith("tokenizer.")]
    if tokenizer_keys and not steps and _checkpoint_dirs(run):  # an imported model, not trained yet
        detail = "; ".join(f"{key}: {_short(changed[key][0])} -> {_short(changed[key][1])}" for key in tokenizer_keys)
        raise ConfigError(
            f"{', '.join(tokenizer_keys)}: differ from {RunDir(run).config}, and the run's checkpoint 0 is a model "
            f"imported with its own tokenizer ({RunDir(run).tokenizer}), whose pieces its embeddings index "
            f"({detail}). Drop these changes (the data may change), or import into a new run directory."
        )
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
    """`Resolved.record_for_data` for a plain (cfg, run)."""
    given(cfg, run).record_for_data()


def _record_for_data(cfg: RunConfig, run: RunDir, old: RunConfig | None) -> None:
    """What the data stages record before they run: the whole config while the run has no
    checkpoint; after that only the data and tokenizer sections, and only when they change (the
    rest is recorded by the training path once training has started with it). `cfg` has passed
    `check` against `old` (resolution)."""
    if old is None or not _checkpoint_dirs(run):
        if old != cfg:
            record(cfg, run)
    elif stage_keys(old, cfg):
        record(dataclasses.replace(old, data=cfg.data, tokenizer=cfg.tokenizer), run)


def _describe_changes(cfg: RunConfig, run: RunDir, old: RunConfig | None) -> str | None:
    """A log line naming the settings that differ from the recorded config, or None."""
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
