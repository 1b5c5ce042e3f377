"""sd-mecha 0.0.25's recipe helpers, with its signatures and meanings, built from mecha's methods.

Where a helper of 0.0.25 has a mecha counterpart of the same signature (``mecha_methods.add_difference``,
``add_perpendicular``, ``add_difference_ties``, ``model_stock_n_models``, ``copy_region``) it is used as is;
the others keep what 0.0.25 meant:

- ``tensor_sum`` as a helper is ``copy_region`` (width 1.0 by default), not the ``tensor_sum`` method;
- ``cosine_add_a``/``cosine_add_b`` are the ``add_cosine_a``/``add_cosine_b`` methods, ``alpha`` required;
- ``dropout(a, *models, alpha=)`` is ``a + alpha dropout(models - a)``; ``seed`` None or negative draws
  a random seed at each merge, stored in the output's recipe (0.0.25 failed on None);
  ``overlap_emphasis`` reaches the method (0.0.25 passed it under another name, so it was always 0);
- ``rotate(..., cache=)`` takes the dict 0.0.25 filled with decompositions; mecha fills it the same way
  when the recipe is merged through :class:`~mecha_compat.RecipeMerger`;
- ``copy_region`` and ``rotate`` run where the merge runs (0.0.25 defaulted them to ``device="cuda"``).
"""

from __future__ import annotations

from typing import Any

import mecha_methods
from mecha_core import MergeSpace, RecipeNode, methods

from .nodes import RecipeNodeOrPath, path_to_node, remember_cache

Hyper = float | int | dict[str, float | int]
RANDOM_SEED = -1

add_difference = mecha_methods.add_difference
add_perpendicular = mecha_methods.add_perpendicular
add_difference_ties = mecha_methods.add_difference_ties
model_stock_n_models = mecha_methods.model_stock_n_models
copy_region = mecha_methods.copy_region
tensor_sum = copy_region


def _seed(seed: Any) -> Any:
    return RANDOM_SEED if seed is None else seed


def _task_vectors(base: RecipeNode, models: tuple[RecipeNodeOrPath, ...], options: dict[str, Any]) -> list[RecipeNode]:
    nodes = [path_to_node(m) for m in models]
    return [n if n.space is MergeSpace.DELTA else methods.subtract(n, base, **options) for n in nodes]


def cosine_add_a(a: RecipeNodeOrPath, b: RecipeNodeOrPath, *, alpha: Hyper, device: str | None = None,
                 dtype: Any = None) -> RecipeNode:
    """0.0.25's name of the ``add_cosine_a`` method."""
    return methods.add_cosine_a(path_to_node(a), path_to_node(b), alpha=alpha, device=device, dtype=dtype)


def cosine_add_b(a: RecipeNodeOrPath, b: RecipeNodeOrPath, *, alpha: Hyper, device: str | None = None,
                 dtype: Any = None) -> RecipeNode:
    """0.0.25's name of the ``add_cosine_b`` method."""
    return methods.add_cosine_b(path_to_node(a), path_to_node(b), alpha=alpha, device=device, dtype=dtype)


def add_difference_ties_extended(base: RecipeNodeOrPath, *models: RecipeNodeOrPath, alpha: Hyper, k: Hyper = 0.2,
                                 vote_sgn: Hyper = 0.0, apply_stock: Hyper = 0.0, cos_eps: Hyper = 1e-6,
                                 apply_median: Hyper = 0.0, eps: Hyper = 1e-6, maxiter: Hyper = 100,
                                 ftol: Hyper = 1e-20, device: str | None = None, dtype: Any = None) -> RecipeNode:
    """base + alpha ties_sum_extended(task vectors of the models)."""
    options = {"device": device, "dtype": dtype}
    base_node = path_to_node(base)
    merged = methods.ties_sum_extended(*_task_vectors(base_node, models, options), k=k, vote_sgn=vote_sgn,
                                       apply_stock=apply_stock, cos_eps=cos_eps, apply_median=apply_median, eps=eps,
                                       maxiter=maxiter, ftol=ftol, **options)
    return methods.add_difference(base_node, merged, alpha=alpha, **options)


def ties_with_dare(base: RecipeNodeOrPath, *models: RecipeNodeOrPath, probability: Hyper = 0.9,
                   no_rescale: Hyper = 0.0, alpha: Hyper = 0.5, seed: Any = None, k: Hyper = 0.2,
                   vote_sgn: Hyper = 0.0, apply_stock: Hyper = 0.0, cos_eps: Hyper = 1e-6, apply_median: Hyper = 0.0,
                   eps: Hyper = 1e-6, maxiter: Hyper = 100, ftol: Hyper = 1e-20, device: str | None = None,
                   dtype: Any = None) -> RecipeNode:
    """base + alpha ties_sum_with_dropout(task vectors); `seed` None or negative is random."""
    return mecha_methods.ties_with_dare(base, *models, probability=probability, no_rescale=no_rescale, alpha=alpha,
                                        seed=_seed(seed), k=k, vote_sgn=vote_sgn, apply_stock=apply_stock,
                                        cos_eps=cos_eps, apply_median=apply_median, eps=eps, maxiter=maxiter,
                                        ftol=ftol, device=device, dtype=dtype)


def dropout(a: RecipeNodeOrPath, *models: RecipeNodeOrPath, probability: Hyper = 0.9, alpha: Hyper = 0.5,
            overlap: Hyper = 1.0, overlap_emphasis: Hyper = 0.0, seed: Any = None, device: str | None = None,
            dtype: Any = None) -> RecipeNode:
    """a + alpha dropout(models - a): DARE-style random masks over the models' differences from a."""
    options = {"device": device, "dtype": dtype}
    base = path_to_node(a)
    deltas = [methods.subtract(path_to_node(m), base, **options) for m in models]
    dropped = methods.dropout(*deltas, probability=probability, overlap=overlap, overlap_emphasis=overlap_emphasis,
                              seed=_seed(seed), **options)
    return methods.add_difference(base, dropped, alpha=alpha, **options)


def rotate(a: RecipeNodeOrPath, b: RecipeNodeOrPath, c: RecipeNodeOrPath | None = None, *, alignment: Hyper = 1.0,
           alpha: Hyper = 0.0, device: str | None = None, dtype: Any = None,
           cache: dict[Any, Any] | None = None) -> RecipeNode:
    """Rotate a onto b (with c: a - c onto b - c, c added back); `cache` keeps decompositions between merges."""
    node = mecha_methods.rotate(path_to_node(a), path_to_node(b), None if c is None else path_to_node(c),
                                alignment=alignment, alpha=alpha, device=device, dtype=dtype)
    return remember_cache(node, cache)
