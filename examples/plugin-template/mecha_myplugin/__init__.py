"""mecha-myplugin: one merge method, one architecture and one CLI command, registered through mecha's hooks.

mecha imports this module when it first needs plugins (entry point ``myplugin`` in group ``mecha``), so
it stays cheap to import: torch is imported inside the functions that compute.
"""

from __future__ import annotations

from mecha_core import Architecture, CliCommand, MergeMethod, hookimpl

from .architecture import TOY_MLP
from .commands import MAKE_TOY_MLP
from .methods import capped_lerp


@hookimpl
def mecha_merge_methods() -> list[MergeMethod]:
    return [capped_lerp]


@hookimpl
def mecha_architectures() -> list[Architecture]:
    return [TOY_MLP]


@hookimpl
def mecha_cli_commands() -> list[CliCommand]:
    return [MAKE_TOY_MLP]
