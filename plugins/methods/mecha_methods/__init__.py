"""mecha-methods: the merge method library, registered through ``mecha_merge_methods()``.

The methods live in small modules by family; ``mecha methods`` lists them all. sd-mecha's recipe
helpers (functions that build sub-recipes, not registered methods) are importable from here:
``from mecha_methods import add_difference, add_difference_ties, ...``.
"""

from __future__ import annotations

from mecha_core import MergeMethod, hookimpl

from . import clamping, cosine, difference, frequency, linear, region, rotation, spherical, stock, task_arithmetic, ties
from .helpers import (add_difference, add_difference_ties, add_perpendicular, copy_region, model_stock_n_models,
                      rotate, ties_with_dare)

FAMILIES = (linear, spherical, cosine, difference, ties, task_arithmetic, stock, frequency, region, rotation, clamping)


@hookimpl
def mecha_merge_methods() -> list[MergeMethod]:
    return [method for family in FAMILIES for method in family.METHODS]


__all__ = ["add_difference", "add_difference_ties", "add_perpendicular", "copy_region", "mecha_merge_methods",
           "model_stock_n_models", "rotate", "ties_with_dare"]
