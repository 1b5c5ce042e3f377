"""Merge spaces: whether a tensor is a model's weights or a difference between weights.

A model file lives in *weight* space; a difference of two models or a LoRA lives in *delta* space.
Merge methods declare the space of each input and of their result with the annotations below, so a
recipe that adds two models where a model and a difference were meant is refused before any tensor
is read.

The annotations are ``typing.Annotated`` over a forward reference to ``torch.Tensor``: type checkers
see a tensor, and importing this module does not import torch.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, get_args, get_origin

from .errors import RecipeError


class MergeSpace(str, enum.Enum):
    """The space a recipe node's tensors live in."""

    WEIGHT = "weight"
    DELTA = "delta"
    BASE = "weight"  # sd-mecha 0.0.x's name of weight space: an alias, ``MergeSpace.BASE is MergeSpace.WEIGHT``

    @classmethod
    def parse(cls, text: str) -> MergeSpace:
        """Read a space name, accepting sd-mecha's spellings (``BASE``/``MODEL`` for weight)."""
        normalized = text.strip().lower()
        if normalized in ("weight", "base", "model"):
            return cls.WEIGHT
        if normalized == "delta":
            return cls.DELTA
        raise RecipeError(f"unknown merge space {text!r}; expected 'weight' or 'delta'")


class _SameSpace:
    """Marker for inputs that must share one space, which the result then has."""

    def __repr__(self) -> str:
        return "Same"


SAME = _SameSpace()

Weight = Annotated["torch.Tensor", MergeSpace.WEIGHT]
Delta = Annotated["torch.Tensor", MergeSpace.DELTA]
Same = Annotated["torch.Tensor", SAME]

SpaceDecl = MergeSpace | _SameSpace


def space_of_annotation(annotation: Any) -> SpaceDecl | None:
    """The space declared by an annotation, or None when it declares none."""
    if get_origin(annotation) is Annotated:
        for extra in get_args(annotation)[1:]:
            if isinstance(extra, (MergeSpace, _SameSpace)):
                return extra
    return None


def describe(space: SpaceDecl | None) -> str:
    """A short human name for a declared or inferred space."""
    if space is None:
        return "unknown space"
    if isinstance(space, _SameSpace):
        return "the same space as the other inputs"
    return f"{space.value} space"
