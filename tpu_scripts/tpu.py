#!/usr/bin/env python3
"""Cloud TPU VM operations for jaxtrain: create, set up, launch, watch, recover, tear down.

One entry point, stdlib only (runs from a laptop with just gcloud installed):

  tpu.py create  --name N --zone Z --accelerator v5litepod-8 [--spot] [--queued [--slices S]]
  tpu.py setup   --name N --zone Z --repo URL --commit SHA
  tpu.py launch  --name N --zone Z --config C --run-dir gs://B/run [KEY=VALUE ...]
                 (stops leftovers, starts training detached on every worker, then watches it)
  tpu.py watch   --name N --zone Z   (wait for a launched job: exit code of the workers)
  tpu.py run     (create if needed, set up, launch; on preemption recreate and relaunch
                  until the run completes or --max-retries is spent)
  tpu.py logs    --name N --zone Z [--collect DIR]
  tpu.py sync    SRC DST            (gcloud storage rsync; either side may be gs://)
  tpu.py delete  --name N --zone Z
  tpu.py state   --name N --zone Z

Every subcommand takes --dry-run (print the exact gcloud commands, run nothing)
and checks its arguments before calling anything. Training runs detached on the
workers (setsid/nohup): a laptop that sleeps or a dropped ssh connection stops
only the watching, never the job; each worker's log goes to ~/jaxtrain-logs/ and
to RUN_DIR/logs/.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import tpu_commands as tc  # noqa: E402


class GcloudError(RuntimeError):
    pass


def redact(text: str) -> str:
    """Hide credentials embedded in URLs (https://TOKEN@github.com/...) before anything is printed."""
    return re.sub(r"(://)[^/@\s'\"]+@", r"\1***@", text)


class Runner:
    """Runs (or, with dry_run, prints) gcloud commands; every command is echoed first."""

    def __init__(self, dry_run: bool, log_file: pathlib.Path | None = None):
        self.dry_run = dry_run
        self.log_file = log_file

    def echo(self, msg: str) -> None:
        msg = redact(msg)
        print(msg, flush=True)

    def call(self, cmd: list[str], *, capture: bool = False, check: bool = True) -> tuple[int, str]:
        self.echo("+ " + redact(shlex.join(cmd)))
        if self.dry_run:
            return 0, ""
        try:
            if capture:
                proc = subprocess.run(cmd, capture_output=True, text=True)
                out, rc = proc.stdout, proc.returncode
                if rc and proc.stderr:
                    self.echo(proc.stderr.rstrip())
            else:
                rc, out = self._stream(cmd), ""
        except FileNotFoundError:
            raise GcloudError(f"{cmd[0]}: not found on PATH; install the Google Cloud CLI (gcloud).") from None
        if check and rc:
            raise GcloudError(f"command failed (exit {rc}): {redact(shlex.join(cmd))}")
        return rc, out

    def _stream(self, cmd: list[str]) -> int:
        """Stream output to the terminal and, when set, append it to the local log."""
        sink = self.log_file.open("a") if self.log_file else None
        try:
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    sys.stdout.write(line)
                    if sink:
                        sink.write(line)
                        sink.flush()
                return proc.wait()
        finally:
            if sink:
                sink.close()


def vm_state(r: Runner, t: tc.Target) -> str | None:
    """READY, CREATING, PREEMPTED, ... or None when the resource does not exist (or on a dry run)."""
    rc, out = r.call(t.describe_state(), capture=True, check=False)
    return out.strip().upper() or None if rc == 0 else None


def create(r: Runner, t: tc.Target, acc: tc.Accelerator, version: str | None, spot: bool,
           retries: int, wait_s: float, poll_s: float = 10.0) -> None:
    """Create, retrying failed creates (stockouts are common) with a growing pause."""
    for attempt in range(retries + 1):
        rc, _ = r.call(t.create(acc, version, spot), check=False)
        if rc == 0:
            break
        if attempt == retries:
            raise GcloudError(f"create {t.name}: failed {retries + 1} times; see the gcloud errors above.")
        pause = min(poll_s * 2 ** attempt, 600)
        r.echo(f"[tpu] create failed (exit {rc}); retry {attempt + 1}/{retries} in {pause:.0f}s")
        time.sleep(pause)
    if r.dry_run or not t.queued:
        return
    deadline = time.monotonic() + wait_s  # queued resources become ACTIVE later
    while (state := vm_state(r, t)) != "ACTIVE":
        if state in ("FAILED", "SUSPENDED") or time.monotonic() > deadline:
            raise GcloudError(f"queued resource {t.name} is {state} (waited up to {wait_s:.0f}s); "
                              "delete it or try another zone.")
        time.sleep(poll_s)


def _workers(t: tc.Target, acc: tc.Accelerator | None) -> int:
    return (acc.hosts if acc else 1) * t.slices


def setup(r: Runner, t: tc.Target, acc: tc.Accelerator | None, repo: str, commit: str, install: str,
          retries: int = 2, pause: float = 30.0) -> None:
    """Install on every worker; a failed setup (apt busy, a network blip) is retried from scratch."""
    for attempt in range(retries + 1):
        rc, _ = r.call(t.ssh(tc.setup_command(repo, commit, install), workers=_workers(t, acc)), check=False)
        if rc == 0:
            return
        if attempt == retries:
            raise GcloudError(f"setup of {t.name}: failed {retries + 1} times; see the errors above.")
        r.echo(f"[tpu] setup failed (exit {rc}); retry {attempt + 1}/{retries} in {pause:.0f}s")
        time.sleep(pause)


def start(r: Runner, t: tc.Target, acc: tc.Accelerator | None, args: argparse.Namespace) -> None:
    """Stop what a previous launch left (processes, the libtpu lock), then start training detached."""
    n = _workers(t, acc)
    r.call(t.ssh(tc.cleanup_command(args.run_dir), workers=n), check=False)
    r.call(t.ssh(tc.train_command(args.config, args.run_dir, args.overrides, t.slices, args.python), workers=n))


def watch(r: Runner, t: tc.Target, acc: tc.Accelerator | None, poll_s: float, give_up_s: float) -> int | None:
    """Wait for the job: its exit code (the first non-zero worker's, else 0); None when the VM went away.

    A failed poll (the laptop's connection dropped, ssh refused for a moment) is not the job failing: the
    VM's state decides, and the watch goes on while the VM is healthy (for up to give_up_s of failed polls)."""
    n, failed_since = _workers(t, acc), None
    ready = "ACTIVE" if t.queued else "READY"
    while True:
        rc, out = r.call(t.ssh(tc.poll_command(), workers=n), capture=True, check=False)
        if r.dry_run:
            return 0
        codes = [int(line.split()[1]) for line in out.splitlines() if line.startswith("jaxtrain-exit ")]
        running = sum(line.strip() == "jaxtrain-running" for line in out.splitlines())
        if rc == 0 and len(codes) == n and not running:
            return next((c for c in codes if c), 0)
        if rc == 0 and codes and any(codes):  # a worker died: the others hang until the heartbeat; stop them now
            return next(c for c in codes if c)
        if rc != 0:
            state = vm_state(r, t)
            if state != ready:
                return None
            failed_since = failed_since or time.monotonic()
            if time.monotonic() - failed_since > give_up_s:
                raise GcloudError(f"could not reach the workers of {t.name} for {give_up_s:.0f}s although it is "
                                  f"{state}; the job may still be running: `tpu.py watch` again later.")
            r.echo(f"[tpu] poll failed (exit {rc}) but {t.name} is {state}: the job runs on; watching again")
        else:
            failed_since = None
        time.sleep(poll_s)


def launch(r: Runner, t: tc.Target, acc: tc.Accelerator | None, args: argparse.Namespace) -> int:
    start(r, t, acc, args)
    r.echo(f"[tpu] training started on {t.name}, detached; follow it with `tpu.py logs` (logs also in "
           f"{args.run_dir.rstrip('/')}/logs/)")
    if args.no_watch:
        return 0
    code = watch(r, t, acc, args.poll, args.wait)
    return 255 if code is None else code


def run_until_done(r: Runner, t: tc.Target, acc: tc.Accelerator, args: argparse.Namespace) -> int:
    """The recovery loop: (re)create, set up, launch; a preempted VM is recreated and the job
    relaunched, resuming from the last checkpoint in the run directory."""
    failures = 0
    needs_setup = True
    while True:
        state = vm_state(r, t)
        deadline = time.monotonic() + args.wait
        while state in tc.TRANSIENT_STATES and time.monotonic() < deadline:
            r.echo(f"[tpu] {t.name} is {state}: waiting")
            time.sleep(max(args.retry_pause, 1.0))
            state = vm_state(r, t)
        ready = "ACTIVE" if t.queued else "READY"
        if state != ready:
            if state is not None:
                r.echo(f"[tpu] {t.name} is {state}: deleting and recreating it")
                r.call(t.delete())
            create(r, t, acc, args.version, args.spot, args.create_retries, args.wait, args.create_pause)
            needs_setup = True
        if needs_setup:
            setup(r, t, acc, args.repo, args.commit, args.install, args.setup_retries, args.retry_pause)
        needs_setup = False
        start(r, t, acc, args)
        code = watch(r, t, acc, args.poll, args.wait)
        if r.dry_run:
            r.echo(f"[tpu] dry run: if the job fails or the VM is preempted, the loop describes it, recreates it "
                   f"when needed and relaunches, up to --max-retries {args.max_retries} times")
            return 0
        if code == 0:
            r.echo(f"[tpu] run complete on {t.name}")
            return 0
        state = vm_state(r, t)
        preempted = code is None or state is None or state in tc.PREEMPTED_STATES
        failures += 1
        kind = f"preempted ({state or 'gone'})" if preempted else f"failed with exit {code} (VM {state})"
        if failures > args.max_retries:
            r.echo(f"[tpu] job {kind}; retry budget of {args.max_retries} spent, giving up")
            return 1
        r.echo(f"[tpu] job {kind}; relaunch {failures}/{args.max_retries} from the last checkpoint")
        time.sleep(args.retry_pause)


def logs(r: Runner, t: tc.Target, acc: tc.Accelerator | None, collect: str | None, lines: int) -> None:
    if not collect:
        r.call(t.ssh(f"tail -n {int(lines)} -F {tc.REMOTE_LOG}", workers=_workers(t, acc)), check=False)
        return
    dest = pathlib.Path(collect)
    if not r.dry_run:
        dest.mkdir(parents=True, exist_ok=True)
    for node in t.nodes():  # every slice of a multislice, every worker of each
        for worker in range(acc.hosts if acc else 1):
            name = f"worker-{worker}.log" if len(t.nodes()) == 1 else f"{node}-worker-{worker}.log"
            r.call(t.scp_from(tc.REMOTE_LOG, str(dest / name), worker, node), check=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpu.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, target: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
        if target:
            p.add_argument("--name", required=True, help="TPU VM (or queued resource) name")
            p.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-east5-a (v5p), us-west4-a (v5e)")
            p.add_argument("--project", help="GCP project (default: gcloud's configured project)")
            p.add_argument("--queued", action="store_true", help="use a queued resource (needed for --slices > 1)")
            p.add_argument("--slices", type=int, default=1, help="slices in a multislice queued resource")
        return p

    def add_create(p: argparse.ArgumentParser) -> None:
        p.add_argument("--accelerator", required=True, help="v5litepod-8 (alias v5e-8), v5p-8, v4-32, v6e-8, ...")
        p.add_argument("--version", help="runtime version (default: the one for the chip generation)")
        p.add_argument("--spot", action="store_true", help="spot capacity (cheaper, may be preempted)")
        p.add_argument("--create-retries", type=int, default=3, help="retries of a failed create")
        p.add_argument("--wait", type=float, default=3600, help="seconds to wait for a queued resource")
        p.add_argument("--create-pause", type=float, default=10, help="first pause before a create retry (doubles)")

    def add_setup(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--repo", required=required, help="git URL of this project (or your fork)")
        p.add_argument("--commit", default="main", help="commit, tag or branch to install")
        p.add_argument("--install", default=tc.DEFAULT_INSTALL, help="install command run in the checkout")
        p.add_argument("--setup-retries", type=int, default=2, help="retries of a failed setup")

    def add_watch(p: argparse.ArgumentParser) -> None:
        p.add_argument("--accelerator", help="accelerator type (the number of workers to wait for)")
        p.add_argument("--poll", type=float, default=60, help="seconds between checks of the job")
        p.add_argument("--wait", type=float, default=3600,
                       help="seconds of unreachable workers on a healthy VM before giving up watching")

    def add_launch(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, help="preset name or YAML path (inside the checkout)")
        p.add_argument("--run-dir", required=True, help="run directory, gs://BUCKET/... so it outlives the VM")
        p.add_argument("--python", default=".venv/bin/python", help="interpreter on the workers")
        p.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE")

    add_create(add("create", "create a TPU VM, pod slice or multislice queued resource"))
    p = add("setup", "install the project at a commit on every worker")
    add_setup(p, required=True)
    p.add_argument("--accelerator", help="accelerator type (the number of workers)")
    p.add_argument("--retry-pause", type=float, default=30, help="seconds between setup attempts")
    p = add("launch", "start `jaxtrain train` detached on all workers at once, then watch it")
    add_launch(p)
    add_watch(p)
    p.add_argument("--no-watch", action="store_true", help="return once the job is started")
    add_watch(add("watch", "wait for a launched job and exit with its exit code"))
    p = add("run", "create if needed, set up, launch; recreate and relaunch on preemption until done")
    add_create(p)
    add_setup(p, required=True)  # a recreated VM starts empty: the loop must be able to set it up again
    add_launch(p)
    p.add_argument("--poll", type=float, default=60, help="seconds between checks of the job")
    p.add_argument("--max-retries", type=int, default=10, help="relaunches allowed after preemptions/failures")
    p.add_argument("--retry-pause", type=float, default=30, help="seconds between relaunches")
    p.add_argument("--log-file", help="also append the job's output to this local file")
    p = add("logs", "stream the training log of every worker, or --collect them into a directory")
    p.add_argument("--collect", help="copy each worker's log into this local directory")
    p.add_argument("--accelerator", help="accelerator type (the number of workers)")
    p.add_argument("--lines", type=int, default=100)
    p = add("sync", "copy a run directory to or from Cloud Storage (gcloud storage rsync)", target=False)
    p.add_argument("src")
    p.add_argument("dst")
    add("delete", "delete the TPU VM or queued resource")
    add("state", "print the VM's state (READY, PREEMPTED, ...) or NOT_FOUND")
    return parser


def _check(args: argparse.Namespace) -> tuple[tc.Target | None, tc.Accelerator | None]:
    if args.command == "sync":
        if not (args.src.startswith("gs://") or args.dst.startswith("gs://")):
            raise tc.UsageError(f"sync {args.src!r} {args.dst!r}: one side must be a gs:// path.")
        for flag, p in (("SRC", args.src), ("DST", args.dst)):
            if p.startswith("gs://"):
                tc.check_gs(p, flag)
        return None, None
    tc.check_name(args.name)
    tc.check_zone(args.zone)
    tc.check_project(args.project)
    if args.slices < 1 or (args.slices > 1 and not args.queued):
        raise tc.UsageError(f"--slices {args.slices}: multislice (> 1) needs --queued; at least 1.")
    acc = tc.parse_accelerator(args.accelerator) if getattr(args, "accelerator", None) else None
    if args.command in ("launch", "run"):
        if args.run_dir.startswith("gs://"):
            tc.check_gs(args.run_dir, "--run-dir")
        elif args.command == "run" and not os.path.isabs(args.run_dir):
            raise tc.UsageError(f"--run-dir {args.run_dir!r}: a recreated VM starts with an empty disk; use gs://BUCKET/... "
                                "(or an absolute path on storage that outlives the VM).")
        tc.train_command(args.config, args.run_dir, args.overrides, args.slices, args.python)
    if args.command in ("setup", "run"):
        tc.setup_command(args.repo, args.commit, args.install)
    return tc.Target(args.name, args.zone, args.project, args.queued, args.slices), acc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        target, acc = _check(args)
    except tc.UsageError as e:
        print(f"tpu.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    r = Runner(args.dry_run, pathlib.Path(args.log_file) if getattr(args, "log_file", None) else None)
    try:
        if args.command == "sync":
            r.call(tc.storage_sync(args.src, args.dst))
        elif args.command == "create":
            create(r, target, acc, args.version, args.spot, args.create_retries, args.wait, args.create_pause)
        elif args.command == "setup":
            setup(r, target, acc, args.repo, args.commit, args.install, args.setup_retries, args.retry_pause)
        elif args.command == "launch":
            return launch(r, target, acc, args)
        elif args.command == "watch":
            code = watch(r, target, acc, args.poll, args.wait)
            return 255 if code is None else code
        elif args.command == "run":
            return run_until_done(r, target, acc, args)
        elif args.command == "logs":
            logs(r, target, acc, args.collect, args.lines)
        elif args.command == "delete":
            r.call(target.delete())
        elif args.command == "state":
            print(vm_state(r, target) or "NOT_FOUND")
    except GcloudError as e:
        print(f"tpu.py {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
