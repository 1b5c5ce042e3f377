"""The :class:`RecipeFormat` spec that ``mecha_recipe_formats()`` returns, kept below the plugin
registry (which checks hook results against it) and above nothing but names: reading a format's files
into recipes is :mod:`mecha_core.recipe_formats`' job."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .names import validate_name

if TYPE_CHECKING:
    from .recipe_formats import ReadRecipe


@dataclasses.dataclass(frozen=True, eq=False)
class RecipeFormat:
    """A recipe file format: its ``suffixes`` (``(".yml", ".yaml")``, lower case with the dot) and
    ``read(path) -> ReadRecipe``. ``read`` raises :class:`mecha_core.MechaError` for a file it refuses,
    naming the file and the field."""

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], ReadRecipe]
    summary: str = ""

    def __post_init__(self) -> None:
        validate_name(self.name, "recipe format")
        if isinstance(self.suffixes, str) or not self.suffixes or not all(
                isinstance(s, str) and s.startswith(".") and s == s.lower() for s in self.suffixes):
            raise ValueError(f"recipe format {self.name!r}: suffixes must be a tuple of lower-case suffixes "
                             f"with their dot, got {self.suffixes!r}")
