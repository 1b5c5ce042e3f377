"""sd-mecha 0.0.x's Python API on mecha: ``import mecha_compat as sd_mecha`` runs a 0.0.25 script unchanged.

Merge methods are those mecha has registered (``sd_mecha.weighted_sum`` is ``mecha_core.methods.weighted_sum``,
with ``__wrapped__`` its tensor function, as 0.0.x had); the recipe helpers keep 0.0.25's signatures and
meanings (see :mod:`mecha_compat.helpers`); ``RecipeMerger`` and ``merge_and_save`` run mecha's merge
with 0.0.25's defaults (see :mod:`mecha_compat.merger`). The README's "Coming from sd-mecha" section
lists what changed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mecha_core
from mecha_core import RecipeNode, blocks, default, deserialize, serialize

from . import extensions
from .helpers import (Hyper, add_difference, add_difference_ties, add_difference_ties_extended, add_perpendicular,
                      copy_region, cosine_add_a, cosine_add_b, dropout, model_stock_n_models, rotate, tensor_sum,
                      ties_with_dare)
from .merger import RecipeMerger, merge_and_save
from .nodes import MergeSpace, lora, model, parameter


def set_log_level(level: str | int = "INFO") -> None:
    """Show log messages from `level` up on standard error, as 0.0.x did."""
    logging.basicConfig(format="%(levelname)s: %(message)s", level=level)


def serialize_and_save(recipe: RecipeNode, output_path: str | os.PathLike[str]) -> Path:
    """Write a recipe's ``.mecha`` text; ``.mecha`` is added to a path without a suffix."""
    path = Path(output_path)
    if not path.suffix:
        path = path.with_suffix(".mecha")
    path = path.absolute()
    logging.getLogger("mecha").info("Saving recipe to %s", path)
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(serialize(recipe), encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def deserialize_path(recipe: str | os.PathLike[str], models_dir: str | os.PathLike[str] | None = None) -> RecipeNode:
    """A ``.mecha`` file as a recipe, anything else as a model (a name is looked up under `models_dir`)."""
    path = Path(recipe)
    if path.suffix == ".mecha":
        return deserialize(path)
    if path.exists() or models_dir is None or path.is_absolute():
        return mecha_core.model(path)
    return mecha_core.model(Path(models_dir) / path)


class LegacyMethod:
    """A registered merge method as 0.0.x exposed it: calling it builds a recipe node, ``__wrapped__`` is
    its tensor function (a custom method may call ``sd_mecha.weighted_sum.__wrapped__(a, b, alpha=...)``)."""

    def __init__(self, method: mecha_core.MergeMethod) -> None:
        self.method = method
        self.__wrapped__ = method.function
        self.__name__ = method.name
        self.__doc__ = method.doc

    def __call__(self, *models: Any, **options: Any) -> RecipeNode:
        return self.method(*models, **options)

    def __repr__(self) -> str:
        return repr(self.method)


def __getattr__(name: str) -> Any:
    """Every other name is the registered merge method of that name, as in ``mecha_core``."""
    if name.startswith("__"):
        raise AttributeError(name)
    return LegacyMethod(getattr(mecha_core.methods, name))


__all__ = [
    "Hyper", "MergeSpace", "RecipeMerger", "add_difference", "add_difference_ties", "add_difference_ties_extended",
    "add_perpendicular", "blocks", "copy_region", "cosine_add_a", "cosine_add_b", "default", "deserialize",
    "deserialize_path", "dropout", "extensions", "lora", "merge_and_save", "model", "model_stock_n_models",
    "parameter", "rotate", "serialize", "serialize_and_save", "set_log_level", "tensor_sum", "ties_with_dare",
]
