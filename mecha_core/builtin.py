"""The core's own plugin: the ``base`` model type (a checkpoint storing its weights as they are), the
``demo`` and ``convert`` commands and the ``local`` executor (a thread pool in this process).

Registered through the same hooks as any third-party plugin, and loaded by name like one (by
:func:`mecha_core.plugins.load_plugins`, once the core is imported), so it may sit above every
other core module.
"""

from __future__ import annotations

from .cli.misc_commands import CONVERT, DEMO
from .cli_command import CliCommand
from .executor_spec import Executor
from .executors import LOCAL
from .hookspecs import hookimpl
from .model_type import BASE_TYPE, ModelType


@hookimpl
def mecha_model_types() -> list[ModelType]:
    return [BASE_TYPE]


@hookimpl
def mecha_cli_commands() -> list[CliCommand]:
    return [DEMO, CONVERT]


@hookimpl
def mecha_executors() -> list[Executor]:
    return [LOCAL]
