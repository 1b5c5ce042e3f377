"""The core's modules form a layered stack: no import cycle, at the top of a module or inside a function.

The graph is read from the sources with ``ast`` (nothing is imported): every ``import`` and ``from
... import`` of a ``mecha_core`` module, wherever it stands, is an edge, except those under ``if
TYPE_CHECKING:``, which never run. A cycle fails with the modules and the lines that close it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mecha_core"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runs(node: ast.If) -> bool:
    """False for ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    test = node.test
    return not ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
                or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not _runs(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return found


def imports_of(source: str, module: str, is_package: bool, modules: set[str]) -> list[tuple[str, int]]:
    """(imported core module, line) of every import in `source` that runs."""
    edges = []
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from . import dtypes`` imports the submodule; ``from .errors import MechaError`` the module
            targets = list(dict.fromkeys(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target
                                         for a in node.names))
        edges += [(target, node.lineno) for target in targets if target in modules and target != module]
    return edges


def import_graph(root: Path = PACKAGE) -> dict[str, list[tuple[str, int]]]:
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    return {name: imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", set(paths))
            for name, path in paths.items()}


def find_cycle(graph: dict[str, list[tuple[str, int]]]) -> list[tuple[str, int]] | None:
    """One cycle as (module, line of its import of the next module), or None. Iterative DFS."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in graph:
        if start in state:
            continue
        path: list[tuple[str, int]] = []
        stack = [(start, iter(graph[start]))]
        state[start] = 1
        while stack:
            module, edges = stack[-1]
            for target, line in edges:
                if state.get(target) == 1:
                    cycle = path + [(module, line)]
                    names = [m for m, _ in cycle]
                    return cycle[names.index(target):]
                if target not in state:
                    state[target] = 1
                    path.append((module, line))
                    stack.append((target, iter(graph.get(target, []))))
                    break
            else:
                state[module] = 2
                stack.pop()
                if path:
                    path.pop()
    return None


def describe(cycle: list[tuple[str, int]]) -> str:
    steps = [f"{module} (line {line}) -> {cycle[(i + 1) % len(cycle)][0]}" for i, (module, line) in enumerate(cycle)]
    return "; ".join(steps)


def test_the_graph_sees_every_module_and_deferred_imports():
    graph = import_graph()
    assert {"mecha_core", "mecha_core.recipe", "mecha_core.cli", "mecha_core.cli.merge_commands"} <= set(graph)
    targets = {module: {target for target, _ in edges} for module, edges in graph.items()}
    assert "mecha_core.recipe" in targets["mecha_core.merge_method"]
    assert "mecha_core.dtypes" in targets["mecha_core.recipe"]  # from . import dtypes: the submodule
    assert "mecha_core.cli" in targets["mecha_core.testing"]  # imported inside a function


def test_the_core_imports_run_one_way():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in mecha_core: " + describe(cycle)


@pytest.mark.parametrize("files, cycle", [
    ({"a.py": "from . import b", "b.py": "def f():\n    from .a import x"}, ["pkg.a", "pkg.b"]),
    ({"a.py": "from .b import y", "b.py": "import pkg.c", "c.py": "from .a import z"}, ["pkg.a", "pkg.b", "pkg.c"]),
    ({"a.py": "from .b import y", "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x"},
     None),
    ({"__init__.py": "from .a import x", "a.py": "import os", "sub/__init__.py": "from .. import a",
      "sub/m.py": "from ..sub import n"}, None),
    ({"__init__.py": "from .a import x", "a.py": "from . import sub", "sub/__init__.py": "from .. import x"},
     ["pkg", "pkg.a", "pkg.sub"]),
])
def test_the_checker_finds_cycles(tmp_path, files, cycle):
    root = tmp_path / "pkg"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "__init__.py").touch()
    found = find_cycle(import_graph(root))
    assert (sorted(m for m, _ in found) if found else None) == cycle
