"""Atomic data stages: build aside, publish with one rename, write the marker last.

Each data stage (curation, tokenizer, token shards, tasks) owns one directory of the run
(`RunDir.stage_dir`). It is built in `RunDir.staging_dir` (`<dir>.partial`), which then replaces
the directory with one rename, and only after that is the marker (`RunDir.stage_marker`) written:
the stage's inputs (the settings and upstream digests it was built from) and a digest of what
it produced. A stage is done only when its marker is there and records the inputs asked for now;
otherwise whatever is in its directory (a half-built `.partial`, a published directory whose
marker never came, outputs of other inputs) is removed and the stage is built again. On gs://
a rename is a copy, not atomic, which is why the marker, not the rename, says "done".

A stage's inputs include the digests of the stages it reads, so a redone stage whose output
changed makes everything after it stale, and one that came out identical (curation and
tokenizer training are deterministic) does not.

`FAULT_HOOK(stage, point)` runs at each publish point ("written": all outputs in the staging
directory; "cleared": the old directory removed; "published": renamed, no marker yet; plus
points inside a stage's build). The fault-injection tests raise or SIGKILL there.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from etils import epath

from jaxtrain.errors import JaxtrainError
from jaxtrain.rundir import RunDir

STAGES = ("curation", "tokenizer", "shards", "tasks")  # in pipeline order
COMMANDS = {"curation": "prepare", "tokenizer": "tokenizer", "shards": "tokenize", "tasks": "train"}

FAULT_HOOK: Callable[[str, str], None] | None = None


class StageMissing(JaxtrainError):
    """A stage needs the output of an earlier one that has not finished."""


def fault_point(stage: str, point: str) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(stage, point)


def _normal(inputs: dict) -> Any:
    return json.loads(json.dumps(inputs, sort_keys=True))  # tuples -> lists, as a marker reads back


def marker(run: RunDir, stage: str) -> dict | None:
    """The stage's marker, or None when it is missing or unreadable (a kill mid-write)."""
    try:
        record = json.loads(RunDir(run).stage_marker(stage).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "inputs" in record else None


def done(run: RunDir, stage: str, inputs: dict) -> dict | None:
    """The marker when the stage was finished with these inputs, else None."""
    record = marker(run, stage)
    return record if record is not None and record["inputs"] == _normal(inputs) else None


def upstream_digest(run: RunDir, stage: str) -> str:
    """The output digest of a finished earlier stage (an input of the stages that read it)."""
    record = marker(run, stage)
    if record is None:
        raise StageMissing(f"{RunDir(run).stage_dir(stage)}: the {stage} stage has not finished; "
                           f"run `jaxtrain {COMMANDS[stage]} --run-dir {RunDir(run)}` first.")
    return record["digest"]


def build(run: RunDir, stage: str, inputs: dict, write: Callable[[epath.Path], str]) -> dict:
    """Build a stage: `write(staging_dir)` fills the staging directory and returns the output's
    digest; then publish and mark. Returns the marker."""
    run = RunDir(run)
    final, staging = run.stage_dir(stage), run.staging_dir(stage)
    if staging.exists():
        staging.rmtree()  # left by a killed build
    staging.mkdir(parents=True)
    digest = write(staging)
    fault_point(stage, "written")
    if final.exists():
        final.rmtree()
    fault_point(stage, "cleared")
    staging.rename(final)
    fault_point(stage, "published")
    record = {"stage": stage, "inputs": _normal(inputs), "digest": digest}
    run.stage_marker(stage).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def file_digest(*paths: epath.Path, length: int = 16) -> str:
    """sha256 over the files' contents, in the order given, read 1 MiB at a time; the first `length` hex
    digits (16 by default: an identity, not a signature; 64: the whole hash)."""
    h = hashlib.sha256()
    for path in paths:
        with epath.Path(path).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:length]
