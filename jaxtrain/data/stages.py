"""Atomic data stages: build aside, publish with one rename, write the marker last.

Each data stage (curation, tokenizer, token shards, tasks) owns one directory of the run
(`RunDir.stage_dir`). It is built in `RunDir.staging_dir` (`<dir>.partial`), which then replaces
the directory with one rename, and only after that is the marker (`RunDir.stage_marker`) written:
the stage's inputs (the settings and upstream digests it was built from) and a digest of what
it produced. A stage is done only when its marker is there and records the inputs asked for now;
otherwise whatever is in its directory (a half-built `.partial`, a published directory whose
marker never came, outputs of other inputs) is removed and the stage is built again. On gs://
a rename is a copy, not atomic, which is why the marker, not the rename, says "done".

The marker also lists the stage's files (relative names and sizes). A stage whose marker is
there but whose files no longer match it (one deleted, truncated or added since) is redone, with
a log line saying which file; markers written before the list existed are trusted as they are. The stages training reads
(`DIGESTED`: tokenizer, token shards, tasks) also record each file's sha256, checked whenever the
stage is reused: a flipped bit in a token shard is named and the stage redone, not met later as a
reader's traceback. The curated corpus, the largest and read only by the stages after it, is
checked by size.

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
from jaxtrain.utils import log

STAGES = ("curation", "tokenizer", "shards", "tasks")  # in pipeline order
DIGESTED = ("tokenizer", "shards", "tasks")  # their files' contents are checked on reuse, not only their sizes
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


def done(run: RunDir, stage: str, inputs: dict, *, quiet: bool = False) -> dict | None:
    """The marker when the stage was finished with these inputs and its files are still those it
    published, else None (logging why a finished stage's files no longer count, unless quiet)."""
    record = marker(run, stage)
    if record is None or record["inputs"] != _normal(inputs):
        return None
    reason = damage(run, stage, record)
    if reason is not None:
        if not quiet:
            log(f"[{stage}] {reason}; rebuilding")
        return None
    return record


def stage_files(run: RunDir, stage: str) -> dict[str, int]:
    """Relative name -> size of every file under the stage's directory, but its marker."""
    run = RunDir(run)
    directory, marker_file = run.stage_dir(stage), run.stage_marker(stage)
    out: dict[str, int] = {}
    pending = [directory] if directory.exists() else []
    while pending:
        for path in pending.pop().iterdir():
            if path.is_dir():
                pending.append(path)
            elif path != marker_file:
                out[str(path.relative_to(directory))] = path.stat().length
    return dict(sorted(out.items()))


def damage(run: RunDir, stage: str, record: dict) -> str | None:
    """Why the stage's files no longer match its marker (deleted, changed size, added), or None.
    A marker without a file list (written before it existed) is trusted."""
    listed = record.get("files")
    if listed is None:
        return None
    run = RunDir(run)
    where = run.stage_dir(stage).relative_to(run.root)
    now = stage_files(run, stage)
    for name, size in listed.items():
        if name not in now:
            return f"{where}/{name} is gone since the stage was built"
        if now[name] != size:
            return f"{where}/{name} changed size since it was built ({size} -> {now[name]} bytes)"
    added = sorted(set(now) - set(listed))
    if added:
        return f"{where}/{added[0]} was added since the stage was built" + (
            f" (and {len(added) - 1} more)" if len(added) > 1 else "")
    for name, digest in (record.get("digests") or {}).items():
        if file_digest(run.stage_dir(stage) / name) != digest:
            return f"{where}/{name} is damaged: its contents changed since the stage was built (sha256 differs)"
    return None


def _digests(run: RunDir, stage: str, files: dict[str, int]) -> dict[str, str] | None:
    if stage not in DIGESTED:
        return None
    return {name: file_digest(RunDir(run).stage_dir(stage) / name) for name in files}


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
    files = stage_files(run, stage)
    record = {"stage": stage, "inputs": _normal(inputs), "digest": digest, "files": files,
              "digests": _digests(run, stage, files)}
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
