"""mecha-mergekit: mergekit YAML configurations for mecha.

``mecha merge config.yml -o out`` runs a mergekit configuration (the recipe format ``mergekit``,
suffixes ``.yml``/``.yaml``); ``mecha mergekit config.yml`` prints the equivalent ``.mecha`` recipe.
"""

from __future__ import annotations

from typing import Any

from mecha_core import CliCommand, RecipeFormat, hookimpl

from .convert import read_config


@hookimpl
def mecha_recipe_formats() -> list[Any]:
    return [RecipeFormat("mergekit", (".yml", ".yaml"), read_config,
                         summary="a mergekit YAML configuration (models or slices, merge_method, parameters)")]


@hookimpl
def mecha_cli_commands() -> list[Any]:
    from .cli import add_arguments, run
    return [CliCommand("mergekit", "print the .mecha recipe equivalent to a mergekit YAML configuration", run,
                       add_arguments)]
