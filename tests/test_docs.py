"""Documentation that cannot drift: every shell block in README.md and docs/*.md is run, on the tiny config.

A shell block is a fence whose language is bash, sh, shell or console; a python block is run too (exec, in the
same directory). The line right before either may say
    <!-- docs-test: skip (why) -->         not run: it needs what a CPU test cannot have (a TPU VM, gcloud, a GPU,
                                           the network, a downloaded checkpoint) or is the test suite itself
    <!-- docs-test: parse-only (why) -->   its `jaxtrain` commands go through the CLI's own parser and config
                                           check (a renamed flag, subcommand or key fails), but do not run
Each block is its own test case (`test_shell_block[README.md:17]`), so every unmarked block runs or fails.
Every other shell block runs, one command at a time, in one temporary directory shared by all blocks (`work`), with
these substitutions and nothing else (`command_for`):
    python3 dev.py demo ARGS   ->  jaxtrain run --config tiny --run-dir runs/demo ARGS   (dev.py test: skipped above)
    [.venv/bin/]jaxtrain ARGS  ->  jaxtrain.cli.main(ARGS), in this process, with
        --config ANY           ->  --config tiny
        --step N               ->  --step 10           (a checkpoint of the tiny run, which saves every 10 steps)
        compile                ->  + data.seq_len=128 model.max_seq_len=128   (TPU attention tiles 128 positions)
        log.wandb=true         ->  + log.wandb_mode=offline                   (no network)
    pip install ...            ->  not run: the test environment has every extra installed
    python/python3 ARGS        ->  this interpreter, as a subprocess; any other command: a subprocess as written
Before a block runs, each run directory `runs/NAME` it names that does not exist yet gets the tiny prepared data
(the `prepared_run` fixture's data and tokenizer), so data stages are reused, not rebuilt; `runs/demo` is
also trained (the tiny preset's 20 steps) once for all blocks.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import chdir

import pytest

from jaxtrain import cli
from jaxtrain.config import load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|parse-only)\s*\((.+)\)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")
RUN_DIR = re.compile(r"\bruns/[A-Za-z0-9_.-]+")
TINY_STEP = "10"
PER_COMMAND = {"compile": ["data.seq_len=128", "model.max_seq_len=128"]}


def blocks():
    """(id, fence language, (marker, reason) or None, lines) for every fenced block of the docs."""
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            start = i
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            marker = MARKER.fullmatch(lines[start - 1].strip()) if start else None
            found.append((f"{path.relative_to(ROOT)}:{start + 1}", m.group(1), marker and marker.groups(),
                          lines[start + 1:i]))
            i += 1
    return found


def commands(lines):
    """Each command of a block as argv: continuation lines joined, comments dropped."""
    text = "\n".join(lines).replace("\\\n", " ")
    return [argv for line in text.splitlines() if (argv := shlex.split(line, comments=True))]


def command_for(argv):
    """('jaxtrain', ARGS) for the CLI, ('skip', []) for pip, ('process', argv) otherwise; see the module docstring."""
    if argv[:3] == ["python3", "dev.py", "demo"]:
        return "jaxtrain", tiny_cli(["run", "--config", "tiny", "--run-dir", "runs/demo", *argv[3:]])
    if argv[0] in ("jaxtrain", ".venv/bin/jaxtrain"):
        return "jaxtrain", tiny_cli(argv[1:])
    if argv[:2] == ["pip", "install"] or argv[:2] == [".venv/bin/pip", "install"]:
        return "skip", []
    if argv[0] in ("python", "python3"):
        return "process", [sys.executable, *argv[1:]]
    return "process", argv


def tiny_cli(args):
    out = list(args)
    for flag, value in (("--config", "tiny"), ("--step", TINY_STEP)):
        if flag in out:
            out[out.index(flag) + 1] = value
    if out and out[0] in PER_COMMAND:
        out += PER_COMMAND[out[0]]
    if "log.wandb=true" in out:
        out.append("log.wandb_mode=offline")
    return out


def run_cli(args):
    """jaxtrain.cli.main in this process; its exit code (argparse's SystemExit included). The environment is
    restored after it (`compile` sets LIBTPU_INIT_ARGS)."""
    env = dict(os.environ)
    try:
        return cli.main(args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(env)


def parse_only(args, written=frozenset()):
    """The CLI parser and the config check of `main`, without running the command; a config an earlier command
    of the block writes (`written`: its --out, e.g. `jaxtrain plan`) is parsed but not loaded."""
    parser = cli.build_parser()
    try:
        parsed, extra = parser.parse_known_args(args)
    except SystemExit as e:
        pytest.fail(f"jaxtrain {shlex.join(args)}: the CLI refuses these arguments (exit {e.code})")
    if args[0] == "launch":  # and the command it launches, after `--`
        parse_only(args[args.index("--") + 1:])
    overrides = [*getattr(parsed, "overrides", []), *extra]
    bad = [a for a in overrides if "=" not in a or a.startswith("-")]
    assert not bad, f"jaxtrain {shlex.join(args)}: unrecognized arguments {bad}"
    if getattr(parsed, "config", None) not in written:
        load_config(getattr(parsed, "config", None) or "tiny", overrides)


def seed_run_dirs(argvs, work, prepared_run):
    for name in sorted({m for argv in argvs for a in argv for m in RUN_DIR.findall(a)}):
        run = work / name
        if not run.exists():
            shutil.copytree(prepared_run / "data", run / "data")
            shutil.copytree(prepared_run / "tokenizer", run / "tokenizer")


@pytest.fixture(scope="session")
def work(prepared_run, tmp_path_factory):
    """The directory every block runs in, with runs/demo trained on the tiny config."""
    work = tmp_path_factory.mktemp("docs")
    seed_run_dirs([["runs/demo"]], work, prepared_run)
    with chdir(work):
        assert run_cli(["run", "--config", "tiny", "--run-dir", "runs/demo"]) == 0
    return work


SHELL_BLOCKS = [b for b in blocks() if b[1] in SHELL]
PYTHON_BLOCKS = [b for b in blocks() if b[1] == "python"]


def test_every_block_is_a_known_kind_and_every_marker_names_a_reason():
    """Commands cannot hide from this test: fences say their language, shell blocks hold commands, and a marker
    sits right before a shell block."""
    for block_id, lang, marker, lines in blocks():
        assert lang, f"{block_id}: a fence without a language; say bash for commands, text for output"
        if lang not in SHELL | {"python"}:
            assert marker is None, f"{block_id}: a docs-test marker on a {lang} block"
            assert not any(re.match(r"\s*(\.venv/bin/)?(jaxtrain|python3? dev\.py) ", l) for l in lines), (
                f"{block_id}: commands in a {lang} block; make it a bash block")
    for path in DOCS:
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if line.lstrip().startswith("<!--") and "docs-test" in line:
                assert MARKER.fullmatch(line.strip()), f"{path.name}:{n + 1}: malformed marker {line!r}"
                assert n + 1 < len(lines) and FENCE.match(lines[n + 1]), (
                    f"{path.name}:{n + 1}: a marker must sit on the line right before a fence")
    assert len(SHELL_BLOCKS) >= 10, "the docs lost their command examples?"


def test_every_local_link_points_at_a_file():
    for path in [*DOCS, ROOT / "tests" / "README.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if not re.match(r"[a-z]+:", target) and target.split("#")[0]:
                assert (path.parent / target.split("#")[0]).exists(), f"{path.name}: a link to {target}, which is not there"


def test_every_test_the_docs_name_exists():
    """`tests/test_x.py::test_y` and a bare `test_z` after it (same file) name a test that exists, so "tested"
    claims follow renames; tests/README.md names every test file."""
    named = 0
    for path in [*DOCS, ROOT / "tests" / "README.md"]:
        current = None
        for m in re.finditer(r"(?:tests/)?(test_\w+\.py)(?:::(test_\w+))?|`(test_\w+)`", path.read_text()):
            file, func = (m.group(1), m.group(2)) if m.group(1) else (current, m.group(3))
            assert file, f"{path.name}: `{func}` names no file; write tests/test_x.py::{func}"
            current = file
            assert (ROOT / "tests" / file).exists(), f"{path.name}: tests/{file} does not exist"
            if func:
                assert re.search(rf"^def {func}\(", (ROOT / "tests" / file).read_text(), re.M), (
                    f"{path.name}: tests/{file}::{func} does not exist")
                named += 1
    assert named >= 40
    listed = set(re.findall(r"^\| `(test_\w+\.py)` \|", (ROOT / "tests" / "README.md").read_text(), re.M))
    assert listed == {p.name for p in (ROOT / "tests").glob("test_*.py")}, "tests/README.md: one row per test file"


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b[0] for b in SHELL_BLOCKS])
def test_shell_block(block, work, prepared_run):
    block_id, _, marker, lines = block
    argvs = commands(lines)
    assert argvs, f"{block_id}: an empty shell block"
    kind_of_block, reason = marker or (None, None)
    if kind_of_block == "skip":
        pytest.skip(f"{block_id}: {reason}")
    if kind_of_block == "parse-only":
        written = set()
        for argv in argvs:  # as written: no tiny substitutions, nothing runs
            assert command_for(argv)[0] == "jaxtrain", f"{block_id}: parse-only blocks hold jaxtrain commands only"
            parse_only(argv[1:], frozenset(written))
            written.update(argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out")
        return
    seed_run_dirs(argvs, work, prepared_run)
    with chdir(work):
        for argv in argvs:
            kind, args = command_for(argv)
            if kind == "jaxtrain":
                code = run_cli(args)
                assert code == 0, f"{block_id}: `{shlex.join(argv)}` ran as `jaxtrain {shlex.join(args)}`: exit {code}"
            elif kind == "process":
                proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
                assert proc.returncode == 0, f"{block_id}: `{shlex.join(argv)}`: exit {proc.returncode}\n{proc.stderr}"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b[0] for b in PYTHON_BLOCKS])
def test_python_block(block, work):
    block_id, _, marker, lines = block
    if marker:
        assert marker[0] == "skip", f"{block_id}: python blocks are run or skipped"
        pytest.skip(f"{block_id}: {marker[1]}")
    with chdir(work):
        exec(compile("\n".join(lines), block_id, "exec"), {"__name__": "__docs__"})
