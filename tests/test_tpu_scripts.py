"""tpu_scripts/tpu.py against a fake gcloud on PATH: exact commands, retries, errors, recovery."""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TPU = [sys.executable, str(REPO / "tpu_scripts" / "tpu.py")]
FAKE_BIN = REPO / "tests" / "fake_gcloud"
VM = ["--name", "jt-test", "--zone", "us-central2-b"]


@pytest.fixture
def fake(tmp_path):
    root = tmp_path / "gcloud"
    root.mkdir()
    env = dict(os.environ, PATH=f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}", FAKE_GCLOUD_ROOT=str(root))

    class Fake:
        def run(self, *args, check_rc=0, **kw):
            proc = subprocess.run([*TPU, *args], capture_output=True, text=True, env={**env, **kw}, timeout=120)
            if check_rc is not None:
                assert proc.returncode == check_rc, proc.stdout + proc.stderr
            return proc

        def calls(self):
            path = root / "calls.jsonl"
            return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

        def state(self):
            return json.loads((root / "state.json").read_text())

        def set_state(self, **kw):
            s = self.state() if (root / "state.json").exists() else {"vms": {}, "fail_create": 0, "ssh_results": []}
            s.update(kw)
            (root / "state.json").write_text(json.dumps(s))

    f = Fake()
    f.root, f.env = root, env
    return f


def test_create_exact_commands_per_generation_and_mode(fake):
    fake.run("create", *VM, "--accelerator", "v5e-8", "--spot")
    fake.run("delete", *VM)
    fake.run("create", *VM, "--accelerator", "v5p-16", "--queued", "--slices", "2", "--project", "my-proj-1")
    assert fake.calls() == [
        ["compute", "tpus", "tpu-vm", "create", "jt-test", "--zone", "us-central2-b", "--accelerator-type",
         "v5litepod-8", "--version", "v2-alpha-tpuv5-lite", "--spot"],
        ["compute", "tpus", "tpu-vm", "delete", "jt-test", "--zone", "us-central2-b", "--quiet"],
        ["compute", "tpus", "queued-resources", "create", "jt-test", "--zone", "us-central2-b", "--project",
         "my-proj-1", "--accelerator-type", "v5p-16", "--runtime-version", "v2-alpha-tpuv5", "--node-count", "2",
         "--node-prefix", "jt-test"],
        ["compute", "tpus", "queued-resources", "describe", "jt-test", "--zone", "us-central2-b", "--project",
         "my-proj-1", "--format=value(state.state)"],
    ]
    assert fake.state()["vms"]["jt-test"]["workers"] == 4  # two v5p-16 slices of two hosts


def test_failed_create_is_retried_then_gives_up(fake):
    fake.set_state(fail_create=2)
    proc = fake.run("create", *VM, "--accelerator", "v4-8", "--create-retries", "3", "--create-pause", "0")
    creates = [c for c in fake.calls() if c[3] == "create"]
    assert len(creates) == 3 and "retry 2/3" in proc.stdout
    assert fake.state()["vms"]["jt-test"]["state"] == "READY"
    fake.run("delete", *VM)
    fake.set_state(fail_create=5)
    proc = fake.run("create", *VM, "--accelerator", "v4-8", "--create-retries", "1", "--create-pause", "0", check_rc=1)
    assert "failed 2 times" in proc.stderr and "RESOURCE_EXHAUSTED" in proc.stdout


def test_credentials_in_urls_are_never_printed(fake):
    proc = fake.run("setup", "--dry-run", *VM, "--repo", "https://user:s3cret@example.com/j.git", "--commit", "abc")
    assert "s3cret" not in proc.stdout + proc.stderr and "https://***@example.com/j.git" in proc.stdout


def test_dry_run_prints_and_runs_nothing(fake):
    proc = fake.run("run", "--dry-run", *VM, "--accelerator", "v5p-8", "--repo", "https://example.com/j.git",
                    "--commit", "0123abc", "--config", "llama-1b", "--run-dir", "gs://bucket/runs/a b", "train.steps=5")
    assert fake.calls() == []
    lines = [line for line in proc.stdout.splitlines() if line.startswith("+ gcloud")]
    assert lines[1] == ("+ gcloud compute tpus tpu-vm create jt-test --zone us-central2-b --accelerator-type v5p-8 "
                        "--version v2-alpha-tpuv5")
    assert "git checkout -q 0123abc" in lines[2]
    assert "pkill" in lines[3] and "libtpu_lockfile" in lines[3]  # leftovers stopped before the launch
    # the run dir with a space is quoted inside the detached job, inside the remote command, inside the argv
    remote = shlex.split(lines[4][2:])[-1].removeprefix("--command=")
    job = shlex.split(remote.split("setsid nohup bash -c ", 1)[1])[0]
    assert "--run-dir 'gs://bucket/runs/a b' --distributed train.steps=5" in job


@pytest.mark.parametrize(
    "args, message",
    [
        (["create", "--name", "Bad_Name", "--zone", "us-central2-b", "--accelerator", "v4-8"], "--name 'Bad_Name'"),
        (["create", "--name", "ok", "--zone", "uscentral", "--accelerator", "v4-8"], "--zone 'uscentral'"),
        (["create", *VM, "--accelerator", "v7-8"], "--accelerator 'v7-8'"),
        (["create", *VM, "--accelerator", "v5p-12"], "v5p comes in sizes"),
        (["create", *VM, "--accelerator", "v4-8", "--slices", "2"], "needs --queued"),
        (["launch", *VM, "--config", "tiny", "--run-dir", "gs://bkt/r", "steps"], "override 'steps'"),
        (["launch", *VM, "--config", "tiny", "--run-dir", "gs://"], "--run-dir 'gs://'"),
        (["run", *VM, "--accelerator", "v4-8", "--repo", "r", "--config", "tiny", "--run-dir", "runs/x"], "empty disk"),
        (["setup", *VM, "--repo", "r", "--commit", "a;rm -rf /"], "--commit"),
        (["sync", "/tmp/a", "/tmp/b"], "one side must be a gs:// path"),
    ],
)
def test_bad_arguments_refused_before_any_call(fake, args, message):
    proc = fake.run(*args, check_rc=2)
    assert message in proc.stderr
    assert fake.calls() == []


def test_run_relaunches_after_preemption_and_stops_when_budget_spent(fake):
    fake.run("create", *VM, "--accelerator", "v4-8")
    ok, done = {"rc": 0}, {"rc": 0, "out": "jaxtrain-exit 0\n"}
    # setup, cleanup, start, poll (the VM is preempted under it), then after the recreate the same, done
    fake.set_state(ssh_results=[ok, ok, ok, {"rc": 255, "preempt": True}, ok, ok, ok, done])
    common = ["run", *VM, "--accelerator", "v4-8", "--config", "tiny", "--run-dir", "gs://bkt/r", "--retry-pause", "0",
              "--poll", "0", "--repo", "https://example.com/j.git"]
    proc = fake.run(*common)
    verbs = [c[3] for c in fake.calls()]
    # an existing VM is set up once, then after the preemption it is recreated and set up again
    assert verbs == ["create", "describe", "ssh", "ssh", "ssh", "ssh", "describe", "describe", "describe", "delete",
                     "create", "ssh", "ssh", "ssh", "ssh"]
    assert "preempted (PREEMPTED); relaunch 1/10" in proc.stdout and "run complete" in proc.stdout
    # a job that keeps failing on a healthy VM is relaunched in place until the budget is spent
    fake.set_state(ssh_results=[ok] + [ok, ok, {"rc": 0, "out": "jaxtrain-exit 1\n"}] * 3)
    proc = fake.run(*common, "--max-retries", "2", check_rc=1)
    assert "failed with exit 1 (VM READY); relaunch 2/2" in proc.stdout and "budget of 2 spent" in proc.stdout


def test_a_dropped_connection_stops_the_watching_not_the_job(fake):
    fake.run("create", *VM, "--accelerator", "v4-8")
    ok = {"rc": 0}
    running, done = {"rc": 0, "out": "jaxtrain-running\n"}, {"rc": 0, "out": "jaxtrain-exit 0\n"}
    dropped = {"rc": 255}  # ssh: connection closed (the laptop slept, the network blinked)
    fake.set_state(ssh_results=[ok, ok, running, dropped, dropped, running, done])  # cleanup, start, polls
    proc = fake.run("launch", *VM, "--accelerator", "v4-8", "--config", "tiny", "--run-dir", "gs://bkt/r",
                    "--poll", "0")
    assert proc.stdout.count("poll failed (exit 255) but jt-test is READY: the job runs on") == 2
    verbs = [c[3] for c in fake.calls()]
    assert verbs.count("ssh") == 7 and "delete" not in verbs and verbs.count("create") == 1  # no relaunch


def test_relaunch_clears_a_leftover_process_and_the_tpu_lock(fake, tmp_path):
    """A previous job still holds the TPU (it hung, or its launcher died): the next launch stops it first."""
    fake.run("create", *VM, "--accelerator", "v4-8")
    home = fake.root / "vms" / "jt-test" / "worker-0"
    (home / "jaxtrain-logs").mkdir(parents=True)
    leftover = subprocess.Popen(["sleep", "600"], start_new_session=True)
    (home / "jaxtrain-logs" / "train.pid").write_text(f"{leftover.pid}\n")
    (home / "libtpu_lockfile").write_text("held")
    (home / "jaxtrain").mkdir()
    python = tmp_path / "python"  # stands in for the venv's interpreter: records its argv and exits
    python.write_text("#!/bin/sh\n[ -e \"$JAXTRAIN_LIBTPU_LOCKFILE\" ] && echo locked > $HOME/seen || echo free > $HOME/seen\n")
    python.chmod(0o755)
    try:
        fake.run("launch", *VM, "--accelerator", "v4-8", "--config", "tiny", "--run-dir", str(tmp_path / "run"),
                 "--python", str(python), "--poll", "0.2", FAKE_GCLOUD_EXEC="1")
        assert leftover.wait(timeout=30) != 0  # killed by the cleanup
    finally:
        if leftover.poll() is None:
            leftover.kill()
    assert (home / "seen").read_text() == "free\n"  # the new job found the TPU lock gone
    assert (home / "jaxtrain-logs" / "train.exit").read_text().strip() == "0"
    assert (tmp_path / "run" / "logs" / "worker-0.log").exists()  # the worker's log, copied to the run directory


def test_logs_collect_and_sync(fake, tmp_path):
    fake.run("create", *VM, "--accelerator", "v4-16")
    for i in range(2):
        log = fake.root / "vms" / "jt-test" / f"worker-{i}" / "jaxtrain-logs" / "train.log"
        log.parent.mkdir(parents=True)
        log.write_text(f"worker {i} step 10\n")
    fake.run("logs", *VM, "--accelerator", "v4-16", "--collect", str(tmp_path / "logs"))
    assert (tmp_path / "logs" / "worker-1.log").read_text() == "worker 1 step 10\n"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    fake.run("sync", str(tmp_path / "run"), "gs://bucket/runs/r1")
    assert (fake.root / "gcs" / "bucket" / "runs" / "r1" / "metrics.jsonl").exists()
    assert fake.calls()[-1] == ["storage", "rsync", "--recursive", str(tmp_path / "run"), "gs://bucket/runs/r1"]


def _git_head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


@pytest.mark.slow  # 29 s of real training; the fake-gcloud tests check every command and retry by default
def test_relaunch_loop_end_to_end_real_training(fake, prepared_run, tmp_path):
    """The fake executes the remote commands locally: real setup (git clone at a commit), real
    training; the test kills it mid-run and preempts the VM; the loop recreates, sets up again,
    relaunches and the run resumes from its checkpoint to the last step."""
    commit = _git_head()
    if commit is None:
        pytest.skip("needs the project as a git checkout")
    run_dir = tmp_path / "bucket" / "run"  # storage that outlives the VM (gs:// on Cloud TPU)
    shutil.copytree(prepared_run / "data", run_dir / "data")
    shutil.copytree(prepared_run / "tokenizer", run_dir / "tokenizer")
    venv = pathlib.Path(sys.prefix)
    log_file = tmp_path / "job.log"
    cmd = [*TPU, "run", *VM, "--accelerator", "v4-8", "--repo", str(REPO), "--commit", commit,
           "--install", f"ln -s {venv} .venv", "--python", ".venv/bin/python", "--config", "tiny",
           "--run-dir", str(run_dir), "--retry-pause", "0", "--max-retries", "2", "--log-file", str(log_file),
           "--poll", "0.5",
           "train.steps=12", "checkpoint.every_steps=4", "eval.every_steps=1000", "train.log_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**fake.env, "FAKE_GCLOUD_EXEC": "1"})
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "4").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, proc.stdout.read()
    fake.set_state(vms={"jt-test": {**fake.state()["vms"]["jt-test"], "state": "PREEMPTED"}})
    for pid_file in (fake.root / "vms").glob("*/worker-*/jaxtrain-logs/train.pid"):  # the VM's processes die
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    assert "preempted (PREEMPTED); relaunch 1/2" in out and "run complete" in out
    verbs = [c[3] for c in fake.calls() if c[0] == "compute"]
    assert verbs.count("create") == 2 and verbs.count("delete") == 1
    assert sum("bash -c" in c[-1] for c in fake.calls() if c[3:4] == ["ssh"]) == 2  # two detached starts
    logs = sorted((run_dir / "logs").glob("*.log"))  # the worker's log, copied to the run directory
    resumed = [line for f in logs for line in f.read_text().splitlines() if "resuming from checkpoint step" in line]
    assert resumed and int(resumed[-1].split("step")[1].split()[0]) >= 4
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 12


def test_run_waits_for_a_vm_that_is_still_creating(fake, tmp_path):
    fake.run("create", *VM, "--accelerator", "v4-8")
    fake.set_state(vms={"jt-test": {"state": "REPAIRING", "workers": 1}},
                   ssh_results=[{"rc": 0}, {"rc": 0}, {"rc": 0}, {"rc": 0, "out": "jaxtrain-exit 0\n"}])
    flip = tmp_path / "flip.py"  # the fake's state turns READY while the loop waits
    flip.write_text(f"import json,time,pathlib\ntime.sleep(1.5)\np=pathlib.Path({str(fake.root / 'state.json')!r})\n"
                    "s=json.loads(p.read_text());s['vms']['jt-test']['state']='READY';p.write_text(json.dumps(s))\n")
    helper = subprocess.Popen([sys.executable, str(flip)])
    proc = fake.run("run", *VM, "--accelerator", "v4-8", "--repo", "r", "--config", "tiny", "--run-dir", "gs://bkt/r",
                    "--retry-pause", "0", "--poll", "0")
    helper.wait()
    assert "is REPAIRING: waiting" in proc.stdout and "run complete" in proc.stdout
    assert "delete" not in [c[3] for c in fake.calls()]
