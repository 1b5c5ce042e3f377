"""Plugins use only the public API: the names in ``mecha_core.__all__`` and the test kit.

Every plugin of this repository and the plugin template are read (not imported) with ``ast``; an
import of a private module (``mecha_core.tensor_files``) or of a name not in ``__all__`` fails with
the file and line, so the boundary the docs promise is the one the code keeps.
"""

from __future__ import annotations

import ast
import types
from pathlib import Path

import mecha_core
import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SOURCES = sorted(
    path for folder in [*ROOT.joinpath("plugins").iterdir(), ROOT / "examples" / "plugin-template"]
    if folder.is_dir() for path in folder.rglob("*.py") if ".venv" not in path.parts
)
PUBLIC = set(mecha_core.__all__)
PUBLIC_MODULES = {name for name in PUBLIC if isinstance(getattr(mecha_core, name), types.ModuleType)} | {"testing"}


def core_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of every import reaching into mecha_core, spelled as the code spells it."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "mecha_core"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "mecha_core":
            if node.module == "mecha_core":
                found += [(node.lineno, f"mecha_core.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module or ""))
    return found


def allowed(what: str) -> bool:
    parts = what.split(".")
    if parts == ["mecha_core"]:
        return True
    return parts[1] in (PUBLIC | {"testing"}) and (len(parts) == 2 or parts[1] in PUBLIC_MODULES)


def test_the_plugins_are_found():
    names = {path.relative_to(ROOT).parts[1] for path in PLUGIN_SOURCES if path.parts[-3] != "examples"}
    assert {"methods", "sd1", "sdxl", "sd3", "lora", "sdblocks", "mergekit"} <= names


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_plugin_imports_only_public_names(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    private = [f"line {line}: {what}" for line, what in core_imports(tree) if not allowed(what)]
    assert not private, f"{path.relative_to(ROOT)} reaches past mecha_core's public API: {private}"


@pytest.mark.parametrize("source, ok", [
    ("from mecha_core import merge_method", True),
    ("from mecha_core.keyspecs import linear", True),
    ("from mecha_core.testing import tiny_model", True),
    ("import mecha_core", True),
    ("from mecha_core.tensor_files import TensorFile", False),
    ("import mecha_core.output_file", False),
    ("from mecha_core import plan_merge", False),
])
def test_the_checker_tells_public_from_private(source, ok):
    assert all(allowed(what) for _, what in core_imports(ast.parse(source))) is ok
