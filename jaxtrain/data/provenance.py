"""What curation read, recorded so that a card can prove it still describes the inputs.

The first link of a run's provenance chain: every input file of every source
(path, bytes, sha256), the embedded sources' origin (this Python's standard
library), TFDS datasets by name, version and split, and the evaluation sets
the corpus was decontaminated against. Written into the cleaned corpus
(`RunDir.curation_inputs`) when curation runs, so it is covered by the
curation stage's marker; `changed_inputs` re-reads the files and names those
that no longer match (a card says so instead of vouching for them).
"""

from __future__ import annotations

import json
import platform
from typing import Any

from etils import epath

from jaxtrain.data import files, stages
from jaxtrain.data.config import DataConfig


def _file(path: str) -> dict[str, Any]:
    p = epath.Path(path)
    return {"path": path, "bytes": p.stat().length, "sha256": stages.file_digest(p, length=64)}


def _readable(pattern: str) -> list[dict]:
    return [_file(path) for path in files.readable_matches(pattern) if files.not_a_file("", path) is None]


def input_manifest(d: DataConfig) -> dict:
    """Per source its kind and inputs; per decontamination glob its files."""
    sources: dict[str, dict] = {}
    for s in d.sources:
        if s.type in ("files", "warc"):
            sources[s.name] = {"type": s.type, "pattern": s.path, "files": _readable(s.path)}
        elif s.type == "tfds":
            sources[s.name] = {"type": "tfds", "dataset": s.dataset, "split": s.split, "data_dir": s.data_dir}
        else:  # built from this interpreter's own files (jaxtrain.data.corpus)
            sources[s.name] = {"type": "embedded", "python": platform.python_version()}
    return {"sources": sources,
            "decontaminate": {pattern: _readable(pattern) for pattern in d.decontaminate}}


def write(d: DataConfig, clean_dir: epath.Path, name: str) -> None:
    (epath.Path(clean_dir) / name).write_text(json.dumps(input_manifest(d), indent=1) + "\n")


def changed_inputs(manifest: dict) -> list[str]:
    """One line per recorded input file that is gone or whose contents differ now."""
    recorded = [f for s in manifest["sources"].values() for f in s.get("files", ())]
    recorded += [f for fs in manifest.get("decontaminate", {}).values() for f in fs]
    changed = []
    for f in recorded:
        path = epath.Path(f["path"])
        if not path.exists():
            changed.append(f"{f['path']}: gone since curation")
        elif stages.file_digest(path, length=64) != f["sha256"]:
            changed.append(f"{f['path']}: changed since curation (sha256 {f['sha256'][:16]} recorded, "
                           f"{stages.file_digest(path)} now)")
    return changed
