"""Robust centres of many models: Model Stock (sd-mecha's and mergekit's) and the geometric median."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mecha_core import Delta, LazyInput, Same, Weight, merge_method

from .tensor_ops import Tensor, computable, gram, linear_combination, row_cosines


def stock_ratio(deltas: Sequence[Tensor], cos_eps: float) -> Tensor:
    """sd-mecha's Model Stock ratio t per row (last dimension), shaped to broadcast against a delta.

    cos is the mean cosine of consecutive pairs (d1, d2), (d2, d3), ... of each row, and
    t = n cos / (1 + (n - 1) cos). Where that denominator vanishes (cos = -1/(n - 1)) t is 0, keeping the
    base, instead of the infinity the formula gives. One delta has no pair: t = 1.
    """
    import torch

    n = len(deltas)
    shaped = [computable(d).reshape(1) if d.dim() == 0 else computable(d) for d in deltas]
    if n < 2:
        return shaped[0].new_ones((*shaped[0].shape[:-1], 1))
    cosine = sum(row_cosines(x, y, cos_eps) for x, y in zip(shaped, shaped[1:])) / (n - 1)
    denominator = 1 + (n - 1) * cosine
    ratio = torch.where(denominator.abs() < 1e-6, torch.zeros_like(cosine), n * cosine / denominator)
    return ratio.reshape(()) if deltas[0].dim() == 0 else ratio


@merge_method
def model_stock_for_tensor(*models: Delta, cos_eps: float = 1e-6) -> Delta:
    """Model Stock on deltas (sd-mecha's): their mean times t, per row of each tensor.

    t = n cos / (1 + (n - 1) cos), where cos is the mean cosine similarity of consecutive deltas
    (1 with 2, 2 with 3, ...) over each row (last dimension), computed as <x, y> / max(|x| |y|, cos_eps).
    The deltas are relative to a base: model_stock_n_models(base, *models) adds the result back.
    Where 1 + (n - 1) cos is 0, t is 0 (the base is kept) instead of infinite.
    """
    mean = computable(models[0]).clone()
    for other in models[1:]:
        mean += other
    mean /= len(models)
    return (mean * stock_ratio(models, cos_eps)).to(models[0].dtype)


@merge_method(lazy_inputs=True)
def model_stock(base: Weight, a: Weight, b: Weight, *models: Weight, filter_wise: bool = False) -> Weight:
    """mergekit's Model Stock: base + t (mean of the models - base), from a base and at least 2 models.

    With N models and deltas d_i = m_i - base, cos is the mean cosine similarity over all pairs i < j,
    <d_i, d_j> / max(|d_i| |d_j|, 1e-6), clamped to [-1, 1], of the whole tensors, or of each row (last
    dimension) with filter_wise. t = N cos / (1 + (N - 1) cos), and the result is
    t mean(m_i) + (1 - t) base; where the denominator is within 1e-6 of 0, t is 0 (the base), as in
    mergekit 0.1.5.
    """
    import math

    base = LazyInput.of(base)
    others = [LazyInput.of(model) for model in (a, b, *models)]
    count = len(others)
    if filter_wise and len(base.shape) > 0:
        return _model_stock_rows(base.whole(), [model.whole() for model in others])
    products = gram(others, base)
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    cosine = sum(products[i][j] / max(math.sqrt(products[i][i] * products[j][j]), 1e-6)
                 for i, j in pairs) / len(pairs)
    cosine = min(max(cosine, -1.0), 1.0)
    denominator = 1 + (count - 1) * cosine
    ratio = 0.0 if abs(denominator) < 1e-6 else count * cosine / denominator
    return linear_combination([base, *others], [1 - ratio] + [ratio / count] * count)


def _model_stock_rows(base: Tensor, models: Sequence[Tensor]) -> Tensor:
    """filter_wise Model Stock: one t per row (last dimension), from the whole tensors."""
    import torch

    count = len(models)
    deltas = [computable(m) - computable(base) for m in models]
    total = deltas[0].new_zeros((*deltas[0].shape[:-1], 1))
    for i in range(count):
        for j in range(i + 1, count):
            total += row_cosines(deltas[i], deltas[j], 1e-6)
    cosine = (total / (count * (count - 1) / 2)).clamp(-1.0, 1.0)
    denominator = 1 + (count - 1) * cosine
    ratio = torch.where(denominator.abs() < 1e-6, torch.zeros_like(cosine), count * cosine / denominator)
    mean_delta = sum(deltas[1:], deltas[0]) / count
    return (computable(base) + ratio * mean_delta).to(base.dtype)


@merge_method
def geometric_median(*models: Same, eps: float = 1e-6, maxiter: int = 100, ftol: float = 1e-20) -> Same:
    """Geometric median of any number of models, each tensor as one point (Weiszfeld's algorithm).

    The point minimising the sum of Euclidean distances to the models: robust to a few outliers where
    the mean is not. Starting from the mean, each iteration re-weights the models by
    1 / max(distance to the current estimate, eps) and takes their weighted mean; it stops after
    `maxiter` iterations or when the mean distance improves by no more than `ftol` times itself.
    """
    import torch

    points = [computable(m) for m in models]
    estimate = sum(points[1:], points[0]) / len(points)
    objective = _mean_distance(points, estimate)
    for _ in range(max(0, int(maxiter))):
        distances = torch.stack([torch.linalg.vector_norm(p - estimate) for p in points])
        weights = 1 / distances.clamp_min(eps)
        estimate = sum(w * p for w, p in zip(weights, points)) / weights.sum()
        previous, objective = objective, _mean_distance(points, estimate)
        if abs(previous - objective) <= ftol * objective:
            break
    return estimate.to(models[0].dtype)


def _mean_distance(points: Sequence[Tensor], estimate: Tensor) -> float:
    import torch
    return float(sum(torch.linalg.vector_norm(p - estimate) for p in points)) / len(points)


METHODS: list[Any] = [model_stock_for_tensor, model_stock, geometric_median]
