"""CLI commands that plugins add to ``mecha`` through ``mecha_cli_commands()``."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

from .names import validate_name


@dataclasses.dataclass(frozen=True, eq=False)
class CliCommand:
    """A ``mecha NAME`` subcommand.

    ``add_arguments(parser)`` declares its options on an argparse parser; ``run(args)`` does the work
    and returns an exit status (None means 0). Raise :class:`mecha_core.MechaError` for a user error:
    the CLI prints it on one line and exits 1.
    """

    name: str
    summary: str
    run: Callable[[argparse.Namespace], int | None]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    def __post_init__(self) -> None:
        validate_name(self.name, "CLI command")
