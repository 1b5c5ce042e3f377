"""Command-line arguments ``mecha merge`` and ``mecha explain`` share: a recipe (a file, a plugin's
recipe format, or ``-`` for standard input) and a number of megabytes. Below both command modules.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import MechaError
from ..plugins import get_plugins
from ..recipe import RecipeNode
from ..recipe_format import deserialize
from ..recipe_formats import format_for, read_with


def read_recipe(argument: str) -> RecipeNode:
    if argument == "-":
        return deserialize(sys.stdin.read(), source="<stdin>")
    return deserialize(recipe_path(argument))


def recipe_path(argument: str) -> Path:
    path = Path(argument)
    if path.is_dir():
        raise MechaError(f"{argument}: is a folder, not a recipe file")
    if not path.is_file():
        raise MechaError(f"{argument}: no such recipe file")
    return path


def megabytes(text: str) -> float:
    """An argparse type: a positive, finite number of megabytes (a bad one is a usage error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of megabytes, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of megabytes, got {text!r}")
    return value


def read_recipe_file(argument: str) -> tuple[RecipeNode | Path, Mapping[str, Any]]:
    """The recipe and the merge options its file sets: a plugin's format (by suffix), else a ``.mecha``
    file, given to merge() as a path so that the output may not replace it."""
    if argument == "-":
        return read_recipe("-"), {}
    plugins = get_plugins()
    found = format_for(Path(argument), plugins.recipe_formats.values())
    if found is None:
        return recipe_path(argument), {}
    read = read_with(found, recipe_path(argument), plugins.provider("recipe_formats", found.name).label)
    return read.recipe, read.options
