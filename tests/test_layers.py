"""The house rules, checked on the source: layers only import downwards, no cycles, imports at the top.

Layers (a module may import its own layer and the ones below):
  0  errors, utils, rundir, runlock, hardware, yamlconf   facts and helpers with no jaxtrain imports of substance
  1  models, parallel, scaling, data                  the building blocks
  2  config, runconfig                                composes the sections the blocks define; the run's recorded config
  3  train                                            the Trainer, the step, the loop, checkpoints
  4  evaluate, export                                 built on a trained run
  5  pipeline, sweep, ablate, mixture, plan           stages wired together
  6  cli, cli_scaling                                 arguments -> library calls
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "jaxtrain"

LAYERS = {
    "errors": 0, "utils": 0, "rundir": 0, "runlock": 0, "hardware": 0, "yamlconf": 0,
    "models": 1, "parallel": 1, "scaling": 1, "data": 1,
    "config": 2, "runconfig": 2,
    "train": 3,
    "evaluate": 4, "export": 4,
    "pipeline": 5, "sweep": 5, "ablate": 5, "mixture": 5, "plan": 5,
    "cli": 6, "cli_scaling": 6,
}
# Function-level imports are for optional heavy dependencies only (each with a comment in the code).
OPTIONAL_HEAVY = {"torch", "transformers", "lm_eval", "libtpu", "apache_beam.io.gcp", "wandb", "tokenizers"}
# cli.py imports the library inside each command: XLA_FLAGS must be set before JAX is first imported.
LAZY_BY_DESIGN = {"jaxtrain.cli", "jaxtrain.cli_scaling"}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: pathlib.Path) -> list[tuple[str, bool, int]]:
    """(imported module, at module level?, line) for every import in the file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            modules = _modules()
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            found += [(t, id(node) in top_level, node.lineno) for t in targets]
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if parts[0] == "jaxtrain" and len(parts) > 1 else None


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if m != "jaxtrain" and _layer(m) is None]
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_no_module_imports_from_a_layer_above():
    upward = []
    for name, path in _modules().items():
        for target, _, line in _imports(name, path):
            if target.startswith("jaxtrain.") and name != "jaxtrain":
                if _layer(target) > _layer(name):
                    upward.append(f"{path.relative_to(ROOT.parent)}:{line} ({name}, layer {_layer(name)}) -> "
                                  f"{target} (layer {_layer(target)})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_imports_are_at_the_top_unless_optional_and_heavy():
    hidden = []
    for name, path in _modules().items():
        if name in LAZY_BY_DESIGN:
            continue
        for target, at_top, line in _imports(name, path):
            if not at_top and not any(target == h or target.startswith(h + ".") for h in OPTIONAL_HEAVY):
                hidden.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target} inside a function")
    assert not hidden, "\n".join(hidden)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_between_modules_or_packages():
    modules = _modules()
    module_graph: dict[str, set[str]] = {}
    package_graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        for target, _, _ in _imports(name, path):
            if target in modules and target != name and not name.startswith(target + "."):
                module_graph.setdefault(name, set()).add(target)
                a, b = ".".join(name.split(".")[:2]), ".".join(target.split(".")[:2])
                if a != b and a != "jaxtrain":
                    package_graph.setdefault(a, set()).add(b)
    assert _find_cycle(module_graph) is None, f"module import cycle: {' -> '.join(_find_cycle(module_graph))}"
    assert _find_cycle(package_graph) is None, f"package import cycle: {' -> '.join(_find_cycle(package_graph))}"


def test_files_stay_small():
    big = {str(p.relative_to(ROOT.parent)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not big, f"split these files (about 400 lines at most): {big}"
