"""sd-mecha's recipe helpers: functions that build a sub-recipe out of several merge methods.

They are not merge methods (a recipe stores the methods they call, so a serialized recipe needs only
the registered methods); import them from ``mecha_methods``::

    from mecha_methods import add_difference, add_difference_ties

    recipe = add_difference("a", "b", "c", alpha=0.5)           # a + 0.5 (b - c), clamped to a and b
    recipe = add_difference_ties("base", "m1", "m2", alpha=1.0)  # base + TIES of the task vectors

Models are paths, names, state dicts or recipes. Models in weight space are turned into task vectors
(``subtract(model, base)``); models already in delta space (a LoRA given with ``type="lora"``, a
``subtract`` recipe) are used as they are. `device` and `dtype` apply to every node built. Nothing runs
on a GPU unless `device` says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mecha_core import MergeSpace, RecipeError, RecipeNode, model

from . import clamping, linear, region, rotation, stock, ties

ModelLike = RecipeNode | str | os.PathLike[str] | Mapping[str, Any]


def _node(value: ModelLike) -> RecipeNode:
    """A recipe node for a model given as a path, a name, a state dict or a recipe."""
    return value if isinstance(value, RecipeNode) else model(value)


def _task_vector(node: RecipeNode, base: RecipeNode, options: dict[str, Any]) -> RecipeNode:
    """The model's difference from the base, unless it is one already."""
    if node.space is MergeSpace.DELTA:
        return node
    return linear.subtract(node, base, **options)


def add_difference(a: ModelLike, b: ModelLike, c: ModelLike | None = None, *, alpha: Any = 1.0,
                   clamp_to_ab: bool | None = None, device: str | None = None, dtype: Any = None) -> RecipeNode:
    """a + alpha b, or with c, a + alpha (b - c), optionally clamped into the range of a and b.

    clamp_to_ab: clamp the result entry by entry between a and b. By default it does when c is given
    (b is then a model like a), or when a and b are both known deltas, as sd-mecha did.
    """
    options = {"device": device, "dtype": dtype}
    a, b = _node(a), _node(b)
    difference = linear.subtract(b, _node(c), **options) if c is not None else b
    result = linear.add_difference(a, difference, alpha=alpha, **options)
    if clamp_to_ab is None:
        clamp_to_ab = (a.space is not MergeSpace.DELTA) if c is not None else (
            a.space is not None and a.space == b.space)
    if not clamp_to_ab:
        return result
    if a.space is not None and b.space is not None and a.space != b.space:
        raise RecipeError(f"add_difference: clamp_to_ab needs a and b in one merge space, but a is in "
                          f"{a.space.value} space and b in {b.space.value} space")
    return clamping.clamp(result, a, b, **options)


def add_perpendicular(a: ModelLike, b: ModelLike, c: ModelLike, *, alpha: Any = 1.0, device: str | None = None,
                      dtype: Any = None) -> RecipeNode:
    """a + alpha (the part of b - c orthogonal to a - c): add what b learned from c that a did not."""
    options = {"device": device, "dtype": dtype}
    a, b, c = _node(a), _node(b), _node(c)
    orthogonal = linear.perpendicular_component(linear.subtract(a, c, **options), linear.subtract(b, c, **options),
                                                **options)
    return linear.add_difference(a, orthogonal, alpha=alpha, **options)


def add_difference_ties(base: ModelLike, *models: ModelLike, alpha: Any, k: Any = 0.2, device: str | None = None,
                        dtype: Any = None) -> RecipeNode:
    """base + alpha ties_sum(task vectors of the models, k): TIES merging of models onto their base."""
    options = {"device": device, "dtype": dtype}
    base = _node(base)
    deltas = [_task_vector(_node(m), base, options) for m in models]
    return linear.add_difference(base, ties.ties_sum(*deltas, k=k, **options), alpha=alpha, **options)


def ties_with_dare(base: ModelLike, *models: ModelLike, probability: Any = 0.9, no_rescale: Any = 0.0,
                   alpha: Any = 0.5, seed: int = 0, k: Any = 0.2, vote_sgn: Any = 0.0, apply_stock: Any = 0.0,
                   cos_eps: Any = 1e-6, apply_median: Any = 0.0, eps: Any = 1e-6, maxiter: Any = 100,
                   ftol: Any = 1e-20, device: str | None = None, dtype: Any = None) -> RecipeNode:
    """base + alpha ties_sum_with_dropout(task vectors, ...): DARE then TIES onto the base.

    The hyperparameters are those of ties_sum_with_dropout; alpha scales the merged delta.
    """
    options = {"device": device, "dtype": dtype}
    base = _node(base)
    deltas = [_task_vector(_node(m), base, options) for m in models]
    merged = ties.ties_sum_with_dropout(*deltas, probability=probability, no_rescale=no_rescale, k=k,
                                        vote_sgn=vote_sgn, apply_stock=apply_stock, cos_eps=cos_eps,
                                        apply_median=apply_median, eps=eps, maxiter=maxiter, ftol=ftol, seed=seed,
                                        **options)
    return linear.add_difference(base, merged, alpha=alpha, **options)


def model_stock_n_models(base: ModelLike, *models: ModelLike, cos_eps: Any = 1e-6, device: str | None = None,
                         dtype: Any = None) -> RecipeNode:
    """base + model_stock_for_tensor(task vectors): sd-mecha's Model Stock over any number of models."""
    options = {"device": device, "dtype": dtype}
    base = _node(base)
    deltas = [_task_vector(_node(m), base, options) for m in models]
    return linear.add_difference(base, stock.model_stock_for_tensor(*deltas, cos_eps=cos_eps, **options),
                                 alpha=1.0, **options)


def copy_region(a: ModelLike, b: ModelLike, c: ModelLike | None = None, *, width: Any = 1.0, offset: Any = 0.0,
                top_k: bool = False, device: str | None = None, dtype: Any = None) -> RecipeNode:
    """Copy a region of b into a: tensor_sum (by rows), or top_k_tensor_sum with top_k.

    With c, the copy is done between the differences a - c and b - c, and c is added back.
    """
    options = {"device": device, "dtype": dtype}
    a, b = _node(a), _node(b)
    method = region.top_k_tensor_sum if top_k else region.tensor_sum
    if c is None:
        return method(a, b, width=width, offset=offset, **options)
    c = _node(c)
    copied = method(linear.subtract(a, c, **options), linear.subtract(b, c, **options), width=width, offset=offset,
                    **options)
    return linear.add_difference(c, copied, alpha=1.0, **options)


def rotate(a: ModelLike, b: ModelLike, c: ModelLike | None = None, *, alignment: Any = 1.0, alpha: Any = 0.0,
           device: str | None = None, dtype: Any = None) -> RecipeNode:
    """Rotate a's neurons onto b's (see the rotate method); with c, rotate a - c onto b - c and add c back.

    Runs where the merge runs (the CPU unless `device` or the merge's device says otherwise). Pass
    ``cache={}`` to mecha.merge to reuse the decompositions across merges.
    """
    options = {"device": device, "dtype": dtype}
    a, b = _node(a), _node(b)
    if c is None:
        return rotation.rotate(a, b, alignment=alignment, alpha=alpha, **options)
    c = _node(c)
    rotated = rotation.rotate(linear.subtract(a, c, **options), linear.subtract(b, c, **options),
                              alignment=alignment, alpha=alpha, **options)
    return linear.add_difference(c, rotated, alpha=1.0, **options)


__all__ = ["add_difference", "add_difference_ties", "add_perpendicular", "copy_region", "model_stock_n_models",
           "rotate", "ties_with_dare"]
