"""Linear and spherical interpolation, differences and averages."""

from __future__ import annotations

from typing import Any

from mecha_core import Delta, Same, Weight, merge_method


@merge_method(elementwise=True)
def weighted_sum(a: Same, b: Same, *, alpha: float = 0.5) -> Same:
    """Linear interpolation: (1 - alpha) * a + alpha * b.

    alpha: 0 gives a, 1 gives b; values outside [0, 1] extrapolate.
    """
    return a.lerp(b, alpha)


@merge_method(elementwise=True)
def n_average(*models: Same) -> Same:
    """Mean of any number of models: sum(models) / n."""
    total = models[0].clone()
    for other in models[1:]:
        total += other
    return total.div_(len(models))


@merge_method(elementwise=True)
def add_difference(a: Same, b: Delta, *, alpha: float = 1.0) -> Same:
    """Add a difference: a + alpha * b.

    alpha: how much of the difference b (a delta, e.g. subtract(finetune, base) or a LoRA) to add.
    """
    return a.add(b, alpha=alpha)


@merge_method(elementwise=True)
def subtract(a: Weight, b: Weight) -> Delta:
    """The difference of two models: a - b, a delta to add elsewhere."""
    return a - b


@merge_method
def slerp(a: Same, b: Same, *, alpha: float = 0.5) -> Same:
    """Spherical interpolation of the two tensors, flattened.

    The directions a/|a| and b/|b| are interpolated along the great circle by alpha, and the norms
    linearly: |a| + alpha (|b| - |a|). Nearly parallel or zero tensors fall back to weighted_sum.
    alpha: 0 gives a, 1 gives b.
    """
    import torch

    norm_a = torch.linalg.vector_norm(a)
    norm_b = torch.linalg.vector_norm(b)
    if a.numel() == 0 or norm_a <= 1e-12 or norm_b <= 1e-12:
        return a.lerp(b, alpha)
    unit_a = a / norm_a
    unit_b = b / norm_b
    cosine = (unit_a * unit_b).sum().clamp(-1.0, 1.0)
    omega = torch.arccos(cosine)
    sine = torch.sin(omega)
    if sine.abs() < 1e-6:
        return a.lerp(b, alpha)
    direction = (torch.sin((1 - alpha) * omega) * unit_a + torch.sin(alpha * omega) * unit_b) / sine
    return direction * (norm_a + alpha * (norm_b - norm_a))


METHODS: list[Any] = [weighted_sum, n_average, add_difference, subtract, slerp]
