"""Linear combinations: interpolation, averages, differences and projections."""

from __future__ import annotations

from typing import Any

from mecha_core import Delta, Same, Weight, merge_method

from .tensor_ops import per_model


@merge_method(elementwise=True, coefficients=lambda count, alpha: (1.0 - alpha, alpha))
def weighted_sum(a: Same, b: Same, *, alpha: float = 0.5) -> Same:
    """Linear interpolation of two models: (1 - alpha) a + alpha b.

    alpha: 0 gives a, 1 gives b; values outside [0, 1] extrapolate.
    """
    return a.lerp(b, alpha)


@merge_method(elementwise=True, stored_inputs=True, coefficients=lambda count: (1.0 / count,) * count)
def n_average(*models: Same, dtype: Any = None) -> Same:
    """Mean of any number of models: (m1 + ... + mn) / n.

    Summed one model at a time, so a thousand models need no more memory than their inputs.
    """
    total = models[0].to(dtype=dtype, copy=True)
    for other in models[1:]:
        total.add_(other)  # converts from the stored dtype on the fly: one pass per model
    return total.div_(len(models))


def _linear_coefficients(count: int, weight: Any, normalize: bool) -> tuple[float, ...]:
    weight = per_model(weight, count)
    weight_sum = sum(weight)
    scale = 1.0 / weight_sum if normalize and abs(weight_sum) >= 1e-8 else 1.0
    return tuple(w * scale for w in weight)


@merge_method(elementwise=True, coefficients=_linear_coefficients)
def linear(*models: Same, weight: tuple[float, ...] = 1.0, normalize: bool = True) -> Same:
    """Weighted average of any number of models (mergekit's "linear"): sum(w_i m_i) / sum(w_i).

    weight: one value per model (mergekit's per-model `weight`); a single value applies to all.
    normalize: divide by the sum of the weights (mergekit's default); false gives the plain weighted
    sum. A weight sum within 1e-8 of zero is not divided by.
    """
    weight = per_model(weight, len(models))
    total = models[0] * weight[0]
    for model, w in zip(models[1:], weight[1:]):
        total.add_(model, alpha=w)
    weight_sum = sum(weight)
    if normalize and abs(weight_sum) >= 1e-8:
        total.div_(weight_sum)
    return total


@merge_method(elementwise=True, coefficients=lambda count, alpha: (1.0, alpha))
def add_difference(a: Same, b: Delta, *, alpha: float = 1.0) -> Same:
    """Add a difference to a model: a + alpha b.

    b is a delta: subtract(finetune, base), a LoRA, or any recipe in delta space.
    alpha: how much of b to add; 1 adds all of it, negative values subtract it.
    """
    return a.add(b, alpha=alpha)


@merge_method(elementwise=True, coefficients=lambda count: (1.0, -1.0))
def subtract(a: Weight, b: Weight) -> Delta:
    """The difference of two models: a - b, a delta to add to another model.

    The result is in delta space: add_difference(c, subtract(a, b), alpha) adds alpha (a - b) to c.
    """
    return a - b


@merge_method
def perpendicular_component(a: Same, b: Same) -> Same:
    """The part of b orthogonal to a, both flattened: b - a <a, b> / <a, a>.

    A zero a has no direction, so all of b is orthogonal to it and b is returned.
    """
    norm_squared = (a * a).sum()
    if a.numel() == 0 or not bool(norm_squared > 0):
        return b.clone()
    return b - a * ((a * b).sum() / norm_squared)


@merge_method(elementwise=True)
def geometric_sum(a: Delta, b: Delta, *, alpha: float = 0.5) -> Delta:
    """Weighted geometric mean of two deltas: the real part of a^(1 - alpha) b^alpha.

    Negative entries are raised on the complex plane (principal branch), so the result is
    |a|^(1 - alpha) |b|^alpha cos(pi ((1 - alpha) [a < 0] + alpha [b < 0])): where a and b agree in sign it
    is their weighted geometric mean, where either is 0 it is 0 (a smooth AND of the two deltas), and
    it leans towards the smaller magnitude. alpha in [0, 1]: 0 gives a, 1 gives b.
    """
    import math

    import torch

    magnitude = a.abs().pow(1 - alpha) * b.abs().pow(alpha)
    angle = (1 - alpha) * (a < 0).to(a.dtype) + alpha * (b < 0).to(a.dtype)
    return magnitude * torch.cos(angle * math.pi)


METHODS: list[Any] = [weighted_sum, n_average, linear, add_difference, subtract, perpendicular_component,
                      geometric_sum]
