"""Recipe formats that plugins read: other tools' merge configurations run by ``mecha merge``.

A plugin returns :class:`RecipeFormat` objects from ``mecha_recipe_formats()``. When the recipe file
given to ``mecha merge`` ends in one of a format's suffixes, the format's ``read(path)`` turns it
into a :class:`ReadRecipe`: the recipe, plus the merge options the file sets (a configuration that
names its dtypes, say). Options given on the command line win over the file's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import MechaError
from .recipe import RecipeNode
from .recipe_format_spec import RecipeFormat

# the keyword arguments of mecha_core.merge() a recipe file may set
FILE_OPTIONS = ("work_dtype", "save_dtype", "fallback_model", "drop")


@dataclasses.dataclass(frozen=True)
class ReadRecipe:
    """A recipe read from a file, with the merge options the file sets (a subset of
    :data:`FILE_OPTIONS`, with the values ``mecha_core.merge()`` takes: ``{"save_dtype": "fp16"}``)."""

    recipe: RecipeNode
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, RecipeNode):
            raise TypeError(f"ReadRecipe.recipe must be a recipe node, got {type(self.recipe).__name__}")
        stray = sorted(set(self.options) - set(FILE_OPTIONS))
        if stray:
            raise TypeError(f"ReadRecipe.options: unknown option {stray[0]!r}; expected {', '.join(FILE_OPTIONS)}")


def format_for(path: Path, formats: list[RecipeFormat]) -> RecipeFormat | None:
    """The plugin format reading `path` by its suffix, or None (a ``.mecha`` recipe)."""
    suffix = path.suffix.lower()
    return next((f for f in formats if suffix in f.suffixes), None)


def read_with(recipe_format: RecipeFormat, path: Path, provider: str) -> ReadRecipe:
    """Run a format's reader; anything but a MechaError from it is told as the plugin's failure."""
    try:
        result = recipe_format.read(path)
    except MechaError:
        raise
    except Exception as error:
        raise MechaError(f"{path}: recipe format {recipe_format.name!r} from plugin {provider} failed: "
                         f"{type(error).__name__}: {error}") from error
    if not isinstance(result, ReadRecipe):
        raise MechaError(f"{path}: recipe format {recipe_format.name!r} from plugin {provider} returned "
                         f"{type(result).__name__}, expected a ReadRecipe")
    return result
