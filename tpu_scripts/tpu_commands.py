"""Argument checks and the exact gcloud command lines behind `tpu.py`.

Kept apart from the CLI so every command can be built, printed (`--dry-run`)
and tested without running anything. Commands are argv lists, never shell
strings; the one string that does reach a shell (the remote `--command` run
on the TPU VM) is assembled with shlex.quote on every piece.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

ZONE_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")  # us-central2-b, europe-west4-a
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # GCE resource names
PROJECT_RE = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
ACCEL_RE = re.compile(r"^(v2|v3|v4|v5litepod|v5p|v6e)-([0-9]+)$")
ALIASES = {"v5e": "v5litepod"}

# Runtime (VM image) per generation, from the Cloud TPU "TPU software versions" page.
RUNTIME_VERSION = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
# Sizes the generation is sold in (TensorCores for v2-v4/v5p, chips for v5e/v6e). v4 and v5p slices come in
# many shapes: any multiple of 8 cores up to the largest slice (e.g. v4-384, v5p-640, v5p-768).
VALID_SIZES = {
    "v2": {8, 32, 128, 256, 512},
    "v3": {8, 32, 64, 128, 256, 512, 1024, 2048},
    "v4": set(range(8, 4096 + 1, 8)),
    "v5litepod": {1, 4, 8, 16, 32, 64, 128, 256},
    "v5p": set(range(8, 12288 + 1, 8)),
    "v6e": {1, 4, 8, 16, 32, 64, 128, 256},
}
PREEMPTED_STATES = {"PREEMPTED", "TERMINATED", "STOPPED", "SUSPENDED", "FAILED"}
# States that resolve by themselves: wait for them rather than deleting the VM (a DELETING VM is waited out,
# then recreated; a SUSPENDING queued resource becomes SUSPENDED, then it is recreated).
TRANSIENT_STATES = {"CREATING", "STARTING", "RESTARTING", "REPAIRING", "PROVISIONING", "ACCEPTED",
                    "WAITING_FOR_RESOURCES", "SUSPENDING", "DELETING", "STOPPING", "REIMAGING"}
REMOTE_DIR = "~/jaxtrain"  # where `setup` puts the project on every worker
REMOTE_LOG_DIR = "~/jaxtrain-logs"
REMOTE_LOG = f"{REMOTE_LOG_DIR}/train.log"  # the job's output on each worker
REMOTE_PID = f"{REMOTE_LOG_DIR}/train.pid"  # the detached job's process group
REMOTE_EXIT = f"{REMOTE_LOG_DIR}/train.exit"  # written when the job ends: its exit code
# libtpu's lock: a leftover process (or a crashed one) keeps the TPU from the next job
LIBTPU_LOCKFILE = "${JAXTRAIN_LIBTPU_LOCKFILE:-/tmp/libtpu_lockfile}"
LOG_COPY_EVERY_S = 300  # each worker's log is copied to RUN_DIR/logs/ this often, and when the job ends
# TPU VM images ship Ubuntu 22.04 (Python 3.10); the pinned stack needs 3.11.
DEFAULT_INSTALL = (
    "(command -v python3.11 >/dev/null || ($SUDO apt-get -qq update && $SUDO apt-get -qq install -y python3.11 "
    'python3.11-venv)) && python3.11 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e ".[tpu]"'
)
# Fresh TPU VMs run unattended-upgrades at boot, which holds the apt lock: stop it and wait for the lock.
APT_READY = (
    'SUDO=$(command -v sudo >/dev/null && echo sudo || true); if command -v apt-get >/dev/null; then '
    "$SUDO systemctl stop unattended-upgrades >/dev/null 2>&1 || true; "
    "for _ in $(seq 120); do $SUDO fuser /var/lib/dpkg/lock-frontend /var/lib/apt/lists/lock >/dev/null 2>&1 || break; "
    "sleep 5; done; fi"
)


class UsageError(ValueError):
    """A bad argument, refused before any gcloud call."""


@dataclass(frozen=True)
class Accelerator:
    generation: str
    size: int

    @property
    def type(self) -> str:
        return f"{self.generation}-{self.size}"

    @property
    def hosts(self) -> int:
        """Worker VMs in one slice (each runs the same program)."""
        if self.generation in ("v5litepod", "v6e"):
            return 1 if self.size <= 8 else self.size // 4
        return max(1, self.size // 8)


def parse_accelerator(value: str) -> Accelerator:
    gen, _, size = value.partition("-")
    m = ACCEL_RE.match(f"{ALIASES.get(gen, gen)}-{size}")
    if not m:
        raise UsageError(
            f"--accelerator {value!r}: expected GENERATION-SIZE with GENERATION one of "
            f"{sorted(RUNTIME_VERSION)} (v5e is an alias of v5litepod), e.g. v5litepod-8, v5p-8, v4-32."
        )
    acc = Accelerator(m.group(1), int(m.group(2)))
    if acc.size not in VALID_SIZES[acc.generation]:
        raise UsageError(
            f"--accelerator {value!r}: {acc.generation} comes in sizes {sorted(VALID_SIZES[acc.generation])}."
        )
    return acc


def check_zone(zone: str) -> str:
    if not ZONE_RE.match(zone or ""):
        raise UsageError(f"--zone {zone!r}: expected a zone like us-central2-b or europe-west4-a.")
    return zone


def check_name(name: str, flag: str = "--name") -> str:
    if not NAME_RE.match(name or ""):
        raise UsageError(
            f"{flag} {name!r}: 1-63 characters, lowercase letters, digits and '-', starting with a letter, "
            "not ending with '-'."
        )
    return name


def check_project(project: str | None) -> str | None:
    if project is not None and not PROJECT_RE.match(project):
        raise UsageError(f"--project {project!r}: expected a project id (6-30 chars, lowercase, digits, '-').")
    return project


def check_gs(path: str, flag: str) -> str:
    if not re.match(r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9](/.*)?$", path):
        raise UsageError(f"{flag} {path!r}: expected a Cloud Storage path gs://BUCKET/... (bucket names are 3-222 "
                         "lowercase letters, digits, '-', '_' and '.').")
    return path


@dataclass(frozen=True)
class Target:
    """One TPU VM, or a queued resource holding one or more slices."""

    name: str
    zone: str
    project: str | None = None
    queued: bool = False
    slices: int = 1

    def _common(self) -> list[str]:
        out = ["--zone", self.zone]
        return out + (["--project", self.project] if self.project else [])

    def create(self, acc: Accelerator, version: str | None, spot: bool) -> list[str]:
        version = version or RUNTIME_VERSION[acc.generation]
        if self.queued:
            cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", self.name, *self._common(),
                   "--accelerator-type", acc.type, "--runtime-version", version]
            cmd += ["--node-id", self.name] if self.slices == 1 else [
                "--node-count", str(self.slices), "--node-prefix", self.name]
        else:
            cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", self.name, *self._common(),
                   "--accelerator-type", acc.type, "--version", version]
        return cmd + (["--spot"] if spot else [])

    def describe_state(self) -> list[str]:
        kind = "queued-resources" if self.queued else "tpu-vm"
        fmt = "value(state.state)" if self.queued else "value(state)"
        return ["gcloud", "compute", "tpus", kind, "describe", self.name, *self._common(), f"--format={fmt}"]

    def delete(self) -> list[str]:
        if self.queued:
            return ["gcloud", "compute", "tpus", "queued-resources", "delete", self.name, *self._common(),
                    "--force", "--quiet"]
        return ["gcloud", "compute", "tpus", "tpu-vm", "delete", self.name, *self._common(), "--quiet"]

    def ssh(self, remote_command: str, worker: str = "all", workers: int = 1) -> list[str]:
        """The command on every worker at once: gcloud works through them in batches of 64 by default,
        so the batch is the whole job (`workers` of them, across all slices)."""
        batch = [f"--batch-size={max(workers, 1)}"] if worker == "all" else []
        if self.queued:
            return ["gcloud", "compute", "tpus", "queued-resources", "ssh", self.name, *self._common(),
                    "--node=all", f"--worker={worker}", *batch, f"--command={remote_command}"]
        return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.name, *self._common(),
                f"--worker={worker}", *batch, f"--command={remote_command}"]

    def nodes(self) -> list[str]:
        """The TPU VMs behind the target: one, or one per slice of a multislice queued resource."""
        return [f"{self.name}-{i}" for i in range(self.slices)] if self.queued and self.slices > 1 else [self.name]

    def scp_from(self, remote_path: str, local_path: str, worker: int, node: str | None = None) -> list[str]:
        return ["gcloud", "compute", "tpus", "tpu-vm", "scp", f"{node or self.nodes()[0]}:{remote_path}", local_path,
                *self._common(), f"--worker={worker}"]


def setup_command(repo: str, commit: str, install: str) -> str:
    """Remote script: a clean checkout of `commit` and its pinned requirements (after apt is free)."""
    if not re.match(r"^[0-9a-zA-Z._/-]+$", commit):
        raise UsageError(f"--commit {commit!r}: expected a commit hash, tag or branch name.")
    parts = [
        "set -e",
        APT_READY,
        f"rm -rf {REMOTE_DIR}",
        f"git clone -q {shlex.quote(repo)} {REMOTE_DIR}",
        f"cd {REMOTE_DIR}",
        f"git checkout -q {shlex.quote(commit)}",
    ]
    if install:
        parts.append(install)  # a user-given shell command line, run as written
    return "; ".join(parts)


def cleanup_command(run_dir: str) -> str:
    """Remote script: stop whatever a previous launch left on this worker and free the TPU for the next."""
    pattern = shlex.quote(f"[j]axtrain.cli train .*--run-dir {re.escape(run_dir)}")  # [j]: never this shell
    return "; ".join([
        'SUDO=$(command -v sudo >/dev/null && echo sudo || true)',
        f"if [ -f {REMOTE_PID} ]; then kill -TERM -- -$(cat {REMOTE_PID}) 2>/dev/null && sleep 10; "
        f"kill -KILL -- -$(cat {REMOTE_PID}) 2>/dev/null; rm -f {REMOTE_PID}; fi",
        f"pkill -KILL -f {pattern} || true",
        "$SUDO fuser -k -KILL /dev/accel* /dev/vfio/[0-9]* >/dev/null 2>&1 || true",  # any holder of the TPU
        f"$SUDO rm -f {LIBTPU_LOCKFILE}",
        "true",
    ])


def train_command(config: str, run_dir: str, overrides: list[str], slices: int, python: str) -> str:
    """Remote script: start `jaxtrain train` on this worker detached from the ssh session (it survives a
    dropped connection), logging to REMOTE_LOG, with its exit code in REMOTE_EXIT when it ends and its log
    copied to RUN_DIR/logs/ every LOG_COPY_EVERY_S seconds and at the end. Its process group (setsid: its
    pid) goes to REMOTE_PID before the ssh call returns.

    Multi-host start-up needs nothing on TPU VMs (`--distributed` calls
    jax.distributed.initialize(), which discovers the slice); with several
    slices the mesh's `dcn` axis spans them (the queued-resource runtime sets
    the MEGASCALE_* variables the TPU runtime reads).
    """
    for o in overrides:
        if "=" not in o:
            raise UsageError(f"override {o!r}: expected KEY=VALUE, e.g. train.steps=1000.")
    if slices > 1:
        overrides = [*overrides, f"mesh.dcn={slices}"]
    argv = [python, "-m", "jaxtrain.cli", "train", "--config", config, "--run-dir", run_dir, "--distributed", *overrides]
    worker = "${JAXTRAIN_WORKER:-$(hostname)}"
    copy_dst = f"{run_dir.rstrip('/')}/logs"
    copy = (f"gcloud storage cp -q {REMOTE_LOG} {shlex.quote(copy_dst)}/{worker}.log" if run_dir.startswith("gs://")
            else f"mkdir -p {shlex.quote(copy_dst)} && cp {REMOTE_LOG} {shlex.quote(copy_dst)}/{worker}.log")
    job = "; ".join([
        f"(while sleep {LOG_COPY_EVERY_S}; do {copy} >/dev/null 2>&1; done) & copier=$!",
        f"{shlex.join(argv)} >> {REMOTE_LOG} 2>&1",
        "rc=$?",
        "kill $copier 2>/dev/null",
        f"{copy} >/dev/null 2>&1",
        f"echo $rc > {REMOTE_EXIT}",
    ])
    return (f"mkdir -p {REMOTE_LOG_DIR} && rm -f {REMOTE_EXIT} && cd {REMOTE_DIR} && "
            f"{{ setsid nohup bash -c {shlex.quote(job)} > /dev/null 2>&1 < /dev/null & echo $! > {REMOTE_PID}; }}")


def poll_command() -> str:
    """Remote script: one line per worker, `jaxtrain-exit N` once the job ended, else `jaxtrain-running`."""
    return (f"if [ -f {REMOTE_EXIT} ]; then echo jaxtrain-exit $(cat {REMOTE_EXIT}); "
            f"elif [ -f {REMOTE_PID} ] && kill -0 $(cat {REMOTE_PID}) 2>/dev/null; then echo jaxtrain-running; "
            "else echo jaxtrain-exit 137; fi")  # no exit code and no process: killed (the VM rebooted, OOM)


def storage_sync(src: str, dst: str) -> list[str]:
    return ["gcloud", "storage", "rsync", "--recursive", src, dst]
