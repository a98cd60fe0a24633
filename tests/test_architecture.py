"""The floors of ARCHITECTURE.md, enforced: no import from a higher floor, no import circle,
no Python file over 400 lines outside tests/.

Every import counts: module level, inside functions, under ``if TYPE_CHECKING:``. The checker
is plain :mod:`ast` over the files (nothing is imported), so it runs in a second and names the
file and line of each offence.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("lesionseg", "service", "export", "deploy", "benchmarks")

# The floors from the bottom up; a module may import its own floor and those below. An entry
# is a module or a package (its whole subtree). ``lesionseg`` itself names only its
# __init__ (its subtree is split into the floors below); ``tests`` is above everything.
FLOORS: tuple[tuple[str, ...], ...] = (
    (
        "lesionseg",
        "lesionseg.errors",
        "lesionseg.types",
        "lesionseg.transforms",
        "lesionseg.checksums",
        "lesionseg.settings",
        "lesionseg.provenance",
        "lesionseg.windows",
    ),
    ("lesionseg.measure",),
    ("lesionseg.io",),
    ("lesionseg.models",),
    ("lesionseg.outputs",),
    ("lesionseg.datasets",),
    ("lesionseg.pipeline",),
    ("lesionseg.export",),
    ("lesionseg.pacs",),
    ("lesionseg.train",),
    ("lesionseg.cli",),
    ("service", "export", "deploy"),
    ("benchmarks",),
    ("tests",),
)
SPLIT_PACKAGES = frozenset({"lesionseg"})  # match only exactly: their subtrees have floors
MAX_LINES = 400
SKIPPED_DIRS = frozenset({"tests", "data", "runs", "build", "dist", "site", "node_modules"})


def module_name(path: Path, root: Path) -> str:
    """``lesionseg/models/bundle.py`` -> ``lesionseg.models.bundle``; a package's
    ``__init__.py`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files(root: Path, packages: Iterable[str]) -> list[Path]:
    return sorted(p for package in packages for p in (root / package).rglob("*.py"))


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path, root: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``path`` of a module in ``known``.
    ``from pkg import name`` is the module ``pkg.name`` when that is a module, else ``pkg``."""
    module = module_name(path, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):  # every depth: function bodies and TYPE_CHECKING blocks too
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, path.name == "__init__.py")
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            # `import a.b.c` runs a.b.c: the deepest known module it names is the edge.
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts:
                found.append((".".join(parts), node.lineno))
    return found


def import_graph(root: Path, packages: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported module, line)] among the modules of ``packages`` under ``root``."""
    files = {module_name(p, root): p for p in python_files(root, packages)}
    known = set(files)
    return {
        m: sorted({(t, line) for t, line in imports_of(p, root, known) if t != m})
        for m, p in files.items()
    }


def floor_of(
    module: str, floors: Sequence[Sequence[str]] = FLOORS, split: frozenset = SPLIT_PACKAGES
) -> int | None:
    """The floor of ``module``: its own entry, else its nearest package's, a package of
    ``split`` excepted (None: none)."""
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        prefix = ".".join(parts[:depth])
        if depth < len(parts) and prefix in split:
            continue
        for level, entries in enumerate(floors):
            if prefix in entries:
                return level
    return None


def upward_imports(
    graph: dict, floors: Sequence[Sequence[str]] = FLOORS, split: frozenset = SPLIT_PACKAGES
) -> list[str]:
    """Each import of a higher floor, and each module with no floor, as a sentence."""
    problems = []
    for module, targets in sorted(graph.items()):
        own = floor_of(module, floors, split)
        if own is None:
            problems.append(f"{module} has no floor: add it to FLOORS in {Path(__file__).name}")
            continue
        for target, line in targets:
            theirs = floor_of(target, floors, split)
            if theirs is not None and theirs > own:
                problems.append(
                    f"{module} (floor {own}) line {line} imports {target} (floor {theirs})"
                )
    return problems


def import_cycles(graph: dict) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan,
    iterative so that a long chain cannot reach the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted({t for t, _ in graph.get(start, ())})))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted({t for t, _ in graph.get(child, ())}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return sorted(cycles)


def describe_cycle(graph: dict, component: list[str]) -> str:
    """The circle's modules with the lines that import each other."""
    members = set(component)
    edges = [
        f"{m}:{line} -> {t}" for m in component for t, line in graph.get(m, ()) if t in members
    ]
    return "import circle: " + ", ".join(sorted(set(edges)))


def long_files(root: Path, limit: int = MAX_LINES) -> list[str]:
    """Python files outside tests/ (and hidden, data and build folders) over ``limit`` lines."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(files):
            if name.endswith(".py"):
                path = Path(folder) / name
                lines = len(path.read_text().splitlines())
                if lines > limit:
                    found.append(f"{path.relative_to(root)}: {lines} lines")
    return found


# --- the repository ------------------------------------------------------------------------


def test_no_import_from_a_higher_floor():
    problems = upward_imports(import_graph(REPO, CHECKED))
    assert not problems, "imports that run upward:\n" + "\n".join(problems)


def test_no_import_circles():
    graph = import_graph(REPO, CHECKED)
    cycles = [describe_cycle(graph, c) for c in import_cycles(graph)]
    assert not cycles, "\n".join(cycles)


def test_no_python_file_over_400_lines_outside_tests():
    found = long_files(REPO)
    assert not found, f"over {MAX_LINES} lines (split by concern):\n" + "\n".join(found)


def test_every_checked_module_has_a_floor_and_the_graph_is_not_empty():
    """The checks above would pass vacuously if no file were found or no import resolved."""
    graph = import_graph(REPO, CHECKED)
    assert {m.split(".")[0] for m in graph} == set(CHECKED)
    assert "lesionseg.errors" in {t for t, _ in graph["lesionseg.cli"]}
    assert all(floor_of(m) is not None for m in graph), [m for m in graph if floor_of(m) is None]


# --- the checker, on a planted tree --------------------------------------------------------


def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


TOY = {"floors": (("lib", "lib.base"), ("lib.top",), ("app",)), "split": frozenset({"lib"})}


@pytest.mark.parametrize(
    "source",
    [
        "from lib.top import thing\n",
        "import lib.top\n",
        "def f():\n    from lib.top import thing\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lib.top import T\n",
        "from .top import thing\n",
        "from lib import top\n",
        "import app\n",
    ],
    ids=["from", "import", "in-function", "type-checking", "relative", "from-package", "app"],
)
def test_checker_finds_a_planted_upward_import(tmp_path, source):
    _plant(
        tmp_path,
        {
            "lib/__init__.py": "",
            "lib/base.py": "import os\n" + source,
            "lib/top/__init__.py": "thing = T = 1\n",
            "app/__init__.py": "import lib.top\n",
        },
    )
    problems = upward_imports(import_graph(tmp_path, ("lib", "app")), **TOY)
    line = 1 + source.count("\n")
    assert len(problems) == 1 and problems[0].startswith(f"lib.base (floor 0) line {line} imports")


def test_checker_accepts_downward_and_same_floor_imports(tmp_path):
    _plant(
        tmp_path,
        {
            "lib/__init__.py": "",
            "lib/base.py": "import json\n",
            "lib/top/__init__.py": "from lib import base\nfrom lib.top import leaf\n",
            "lib/top/leaf.py": "from ..base import json\n",
            "app/__init__.py": "import lib.top.leaf\n",
        },
    )
    graph = import_graph(tmp_path, ("lib", "app"))
    assert graph["lib.top.leaf"] == [("lib.base", 1)]
    assert upward_imports(graph, **TOY) == []
    assert import_cycles(graph) == []


def test_checker_names_a_module_without_a_floor(tmp_path):
    _plant(tmp_path, {"lib/__init__.py": "", "lib/stray.py": ""})
    problems = upward_imports(import_graph(tmp_path, ("lib",)), **TOY)
    assert problems == [f"lib.stray has no floor: add it to FLOORS in {Path(__file__).name}"]


def test_checker_finds_a_planted_circle_through_a_function_import(tmp_path):
    _plant(
        tmp_path,
        {
            "lib/__init__.py": "",
            "lib/a.py": "from lib import b\n",
            "lib/b.py": "import lib.c\n",
            "lib/c.py": "def f():\n    from lib.a import x\n",
            "lib/d.py": "from lib import a\n",
        },
    )
    graph = import_graph(tmp_path, ("lib",))
    assert import_cycles(graph) == [["lib.a", "lib.b", "lib.c"]]
    assert describe_cycle(graph, ["lib.a", "lib.b", "lib.c"]) == (
        "import circle: lib.a:1 -> lib.b, lib.b:1 -> lib.c, lib.c:2 -> lib.a"
    )


def test_checker_finds_a_long_file_but_not_in_tests(tmp_path):
    _plant(
        tmp_path,
        {
            "lib/big.py": "x = 1\n" * 401,
            "lib/fine.py": "x = 1\n" * 400,
            "tests/big_test.py": "x = 1\n" * 900,
            ".venv/site.py": "x = 1\n" * 900,
        },
    )
    assert long_files(tmp_path) == ["lib/big.py: 401 lines"]
