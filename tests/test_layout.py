"""The house's layout, read from the source: the wings import one way, down; Ray and Optuna stay in their wings.

    core < inputs < run < search < validate          (trainables/ and search_spaces/ rank as search)
    ctkd_tune/config.py, io.py, values.py            a foundation every wing may import; it imports no wing (so
                                                     does any other module at the top of ctkd_tune/)
    ctkd_tune/cli.py, ctkd_tune/__init__.py          the top: they may import anything
Imports are read with `ast`, at module level and inside functions alike (a function-level import is an import
all the same: it runs the first time the function does). An import under `if TYPE_CHECKING:` never runs: it
counts for the direction (an annotation is a dependency too) but cannot make a cycle. The Ray/Optuna rule is also
checked for real, in a fresh interpreter: importing every module of core, inputs and run leaves both out of
sys.modules.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ctkd_tune", "trainables", "search_spaces")

TOP = {"ctkd_tune", "ctkd_tune.cli"}
WINGS = ("core", "inputs", "run", "search", "validate")
RANK = {**{f"ctkd_tune.{wing}": rank for rank, wing in enumerate(WINGS, start=1)},
        "trainables": WINGS.index("search") + 1, "search_spaces": WINGS.index("search") + 1}
TOP_RANK = len(WINGS) + 1

RAY_HOMES = ("ctkd_tune.search", "trainables")
OPTUNA_HOMES = ("ctkd_tune.search", "ctkd_tune.validate")
KNOWN_RAY_IMPORTS: set[str] = set()  # none: validate/runs.py reaches Ray through search/cluster.py


def _module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module of the three packages (a package is its __init__.py)."""
    modules = {}
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            parts = file.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


MODULES = _module_files()
FOUNDATION = {name for name, file in MODULES.items() if file.parent == ROOT / "ctkd_tune" and name not in TOP}


def _imports(name: str, file: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, runs) for every import statement in the file, at any depth; relative imports
    resolved; runs is False under `if TYPE_CHECKING:`.

    `from pkg import x` counts as an import of pkg.x when that is one of our modules, else of pkg.
    """
    tree = ast.parse(file.read_text(), filename=str(file))
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    type_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                 for stmt in node.body for inner in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        runs = id(node) not in type_only
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, runs) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full if full in MODULES else base, node.lineno, runs))
    return found


IMPORTS = {name: _imports(name, file) for name, file in MODULES.items()}


def _where(name: str, line: int) -> str:
    return f"{MODULES[name].relative_to(ROOT)}:{line}"


def _rank(name: str) -> int:
    """0 for the foundation, 1-5 for the wings (trainables and search_spaces as search), 6 for the top."""
    if name in FOUNDATION:
        return 0
    if name in TOP:
        return TOP_RANK
    for prefix, rank in RANK.items():
        if name == prefix or name.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{name} belongs to no wing: add it to one, or to the foundation, in test_layout.py")


def _is(imported: str, dependency: str) -> bool:
    return imported == dependency or imported.startswith(dependency + ".")


def _inside(name: str, homes: tuple[str, ...]) -> bool:
    return any(name == home or name.startswith(home + ".") for home in homes)


def test_the_module_list_is_the_real_one():
    """The reader sees every wing (a wrong ROOT or glob would make every other test here pass on nothing)."""
    for wing in WINGS:
        assert f"ctkd_tune.{wing}" in MODULES
    assert {"ctkd_tune.core.losses", "ctkd_tune.run.loop", "ctkd_tune.search.driver", "ctkd_tune.validate.runs",
            "trainables.distill_trainable", "search_spaces.default", *TOP} <= MODULES.keys()
    assert {"ctkd_tune.config", "ctkd_tune.io", "ctkd_tune.values"} <= FOUNDATION
    assert any(_is(imported, "ray") for name, found in IMPORTS.items() if _inside(name, RAY_HOMES)
               for imported, _, _ in found), "the search wing imports no Ray: is the reader reading the imports?"


def test_imports_run_one_way_down():
    offences = []
    for name, found in IMPORTS.items():
        for imported, line, _ in found:
            if imported in MODULES and _rank(imported) > _rank(name):
                offences.append(f"{_where(name, line)}: {name} imports {imported} (a wing above it)")
    assert not offences, "imports must run core < inputs < run < search < validate:\n" + "\n".join(offences)


def test_no_import_cycle_between_modules():
    graph = {name: sorted({imported for imported, _, runs in found
                           if runs and imported in MODULES and imported != name})
             for name, found in IMPORTS.items()}
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("dependency, homes, known", [("ray", RAY_HOMES, KNOWN_RAY_IMPORTS),
                                                      ("optuna", OPTUNA_HOMES, set())])
def test_ray_and_optuna_stay_in_their_wings(dependency, homes, known):
    offences = [f"{_where(name, line)}: {name} imports {imported}" for name, found in IMPORTS.items()
                for imported, line, _ in found
                if _is(imported, dependency) and not _inside(name, homes) and name not in known]
    assert not offences, f"{dependency} may only be imported in {', '.join(homes)}:\n" + "\n".join(offences)
    assert known <= MODULES.keys(), f"known exceptions that are no module: {sorted(known - MODULES.keys())}"


def test_every_module_opens_with_a_docstring():
    missing = [str(file.relative_to(ROOT)) for name, file in MODULES.items()
               if name.startswith("ctkd_tune") and not ast.get_docstring(ast.parse(file.read_text()))]
    assert not missing, "modules without a docstring: " + ", ".join(missing)


def test_core_inputs_and_run_import_without_ray_or_optuna():
    """In a fresh interpreter: `import ctkd_tune.core, ctkd_tune.run`, then every module of the three wings."""
    light = sorted(name for name in MODULES if _inside(name, ("ctkd_tune.core", "ctkd_tune.inputs", "ctkd_tune.run")))
    assert "ctkd_tune.run.loop" in light and "ctkd_tune.inputs.models" in light
    script = ("import importlib, sys\n"
              "import ctkd_tune.core, ctkd_tune.run\n"
              f"for name in {light!r}:\n"
              "    importlib.import_module(name)\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna'}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"importing core, inputs and run loaded: {proc.stdout.strip()}"
