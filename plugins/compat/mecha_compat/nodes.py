"""sd-mecha 0.0.x's model and parameter constructors and its merge-space flag, as mecha recipe nodes.

0.0.x's ``MergeSpace`` is a flag (``BASE | DELTA`` means either, in a custom method's annotations);
mecha's is a plain enum with ``MergeSpace.BASE`` as an alias of weight space, so the flag lives here and
is turned into mecha's where a node is made.
"""

from __future__ import annotations

import enum
import os
import weakref
from collections.abc import Mapping
from typing import Any

import mecha_core
from mecha_core import ModelNode, RecipeNode

RecipeNodeOrPath = RecipeNode | str | os.PathLike[str]


class MergeSpace(enum.Flag):
    """0.0.x's merge spaces: ``BASE`` (weights) and ``DELTA`` (differences)."""

    BASE = enum.auto()
    DELTA = enum.auto()

    def __str__(self) -> str:
        return "weight space" if self is MergeSpace.BASE else "delta space"


def mecha_space(space: Any) -> mecha_core.MergeSpace:
    """mecha's merge space for a 0.0.x flag, a mecha space or a name (``"BASE"``, ``"weight"``, ``"delta"``)."""
    if isinstance(space, MergeSpace):
        if space is MergeSpace.BASE:
            return mecha_core.MergeSpace.WEIGHT
        if space is MergeSpace.DELTA:
            return mecha_core.MergeSpace.DELTA
        raise ValueError(f"a recipe parameter has one merge space, not {space}")
    if isinstance(space, mecha_core.MergeSpace):
        return space
    return mecha_core.MergeSpace.parse(str(space))


def model(state_dict: str | os.PathLike[str] | Mapping[str, Any], model_arch: str | None = None,
          model_type: str | None = None) -> ModelNode:
    """A model; `model_arch` and `model_type` are detected from the file when not given (0.0.x assumed sd1)."""
    return mecha_core.model(state_dict, model_arch, model_type)


def lora(state_dict: str | os.PathLike[str] | Mapping[str, Any], model_arch: str | None = None) -> ModelNode:
    """A LoRA file, in delta space: add it to a model with ``add_difference(model, lora(...))``."""
    return mecha_core.model(state_dict, model_arch, "lora")


def parameter(name: str, merge_space: Any = MergeSpace.BASE, model_arch: str | None = None) -> RecipeNode:
    """A recipe parameter; `model_arch` is accepted and not kept (the models that fill it are detected)."""
    return mecha_core.parameter(name, mecha_space(merge_space))


def path_to_node(node_or_path: Any) -> RecipeNode:
    """A node for a recipe, a model path or name, a ``.mecha`` path, or a state dict."""
    if isinstance(node_or_path, RecipeNode):
        return node_or_path
    if isinstance(node_or_path, (str, os.PathLike)) and str(node_or_path).endswith(".mecha"):
        return mecha_core.deserialize(node_or_path)
    return mecha_core.model(node_or_path)


_CACHES: weakref.WeakKeyDictionary[RecipeNode, dict[Any, Any]] = weakref.WeakKeyDictionary()


def remember_cache(node: RecipeNode, cache: dict[Any, Any] | None) -> RecipeNode:
    """Tie a 0.0.x ``cache=`` dict to the node it was given to; the merger passes it to mecha's merge."""
    if cache is not None:
        _CACHES[node] = cache
    return node


def caches_of(recipe: RecipeNode) -> list[dict[Any, Any]]:
    """The ``cache=`` dicts given to the nodes of a recipe, each once, in the order they are met."""
    found: list[dict[Any, Any]] = []
    stack = [recipe]
    while stack:
        node = stack.pop()
        cache = _CACHES.get(node)
        if cache is not None and all(cache is not f for f in found):
            found.append(cache)
        stack.extend(node.children)
    return found
