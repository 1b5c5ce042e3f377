"""sd-mecha 0.0.x's ``extensions`` package: ``extensions.merge_method.convert_to_recipe`` registers a custom method."""

from . import merge_method

__all__ = ["merge_method"]
