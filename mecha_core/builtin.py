"""The core's own plugin: the ``base`` model type (a checkpoint storing its weights as they are).

Registered through the same hooks as any third-party plugin.
"""

from __future__ import annotations

from .hookspecs import hookimpl
from .model_type import BASE_TYPE, ModelType


@hookimpl
def mecha_model_types() -> list[ModelType]:
    return [BASE_TYPE]
