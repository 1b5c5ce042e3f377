"""The hooks a mecha plugin implements. Each returns an iterable of spec objects; that is all.

    from mecha_core import hookimpl

    @hookimpl
    def mecha_merge_methods():
        return [my_method]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .architecture import Architecture
    from .cli_command import CliCommand
    from .merge_method import MergeMethod
    from .model_type import ModelType

hookspec = pluggy.HookspecMarker("mecha")
hookimpl = pluggy.HookimplMarker("mecha")


@hookspec
def mecha_merge_methods() -> Iterable[MergeMethod]:
    """Merge methods: objects made with ``@mecha_core.merge_method``."""


@hookspec
def mecha_architectures() -> Iterable[Architecture]:
    """Architectures: ``mecha_core.Architecture`` objects (keys, components, blocks, classes)."""


@hookspec
def mecha_model_types() -> Iterable[ModelType]:
    """Model types: ``mecha_core.ModelType`` objects (how a file's tensors become keys)."""


@hookspec
def mecha_cli_commands() -> Iterable[CliCommand]:
    """CLI subcommands: ``mecha_core.CliCommand`` objects; a built-in command name is refused."""
