"""The hooks a mecha plugin implements. Each takes no argument and returns a list of spec objects.

    from mecha_core import hookimpl

    @hookimpl
    def mecha_merge_methods():
        return [my_method]

No hook is ``firstresult``: mecha asks every plugin and gathers the answers into one registry per kind,
refusing a name that two plugins provide. ``docs/plugins.md`` documents each hook with an example.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .architecture import Architecture
    from .cli_command import CliCommand
    from .executor_spec import Executor
    from .merge_method import MergeMethod
    from .model_type import ModelType
    from .recipe_format_spec import RecipeFormat

hookspec = pluggy.HookspecMarker("mecha")
hookimpl = pluggy.HookimplMarker("mecha")


@hookspec
def mecha_merge_methods() -> Iterable[MergeMethod]:
    """Merge methods: functions decorated with ``@mecha_core.merge_method``.

        @hookimpl
        def mecha_merge_methods():
            return [capped_lerp]
    """


@hookspec
def mecha_architectures() -> Iterable[Architecture]:
    """Architectures: ``mecha_core.Architecture`` objects (keys, components, blocks, classes).

        @hookimpl
        def mecha_architectures():
            return [Architecture("toy_mlp", components, keys)]
    """


@hookspec
def mecha_model_types() -> Iterable[ModelType]:
    """Model types: ``mecha_core.ModelType`` objects (how a file's tensors become an architecture's keys).

        @hookimpl
        def mecha_model_types():
            return [ModelType("diff", MergeSpace.DELTA, open=DiffSource, detect=detect_diff)]
    """


@hookspec
def mecha_cli_commands() -> Iterable[CliCommand]:
    """CLI subcommands: ``mecha_core.CliCommand`` objects; a built-in command's name is refused.

        @hookimpl
        def mecha_cli_commands():
            return [CliCommand("make_toy_mlp", "write a random toy_mlp model", run, add_arguments)]
    """


@hookspec
def mecha_recipe_formats() -> Iterable[RecipeFormat]:
    """Recipe file formats: ``mecha_core.RecipeFormat`` objects that ``mecha merge`` reads by suffix.

        @hookimpl
        def mecha_recipe_formats():
            return [RecipeFormat("mergekit", (".yml", ".yaml"), read_config)]
    """


@hookspec
def mecha_executors() -> Iterable[Executor]:
    """Executors: ``mecha_core.Executor`` objects (what runs a planned merge: ``merge(executor=NAME)``).

        @hookimpl
        def mecha_executors():
            return [Executor("ray", "a Ray cluster", run_on_ray)]
    """
