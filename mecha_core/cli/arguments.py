"""Command-line arguments ``mecha merge`` and ``mecha explain`` share: a recipe (a file, or ``-`` for
standard input) and a number of megabytes. Below both command modules.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import MechaError
from ..recipe import RecipeNode
from ..recipe_format import deserialize


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
