"""Differences weighted per entry by how three models relate: train difference, add opposite, ..."""

from __future__ import annotations

from typing import Any

from mecha_core import Delta, Same, merge_method

from .tensor_ops import Tensor, computable


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, with 0/0 (and any other NaN) read as 0."""
    return (numerator / denominator).nan_to_num(nan=0.0)


@merge_method(elementwise=True)
def train_difference(a: Same, b: Same, c: Same, *, alpha: float = 1.0) -> Same:
    """Add b - c to a where b moved away from a (supermerger's "train difference").

    a + (b - c) alpha 1.8 |b - a| / (|b - a| + |b - c|): an entry where b already equals a gets none of
    the difference, one where b moved far from a relative to its own change from c gets up to 1.8
    times it. alpha scales the whole difference (0 gives a).
    """
    distance_ba = (b - a).abs()
    scale = _ratio(distance_ba, distance_ba + (b - c).abs()).mul_(1.8 * alpha)
    return a + (b - c) * scale


@merge_method(elementwise=True)
def add_opposite(a: Same, b: Same, c: Same, *, alpha: float = 1.0) -> Same:
    """Add b - c to a where a and b moved from c in opposite directions.

    a + (b - c) alpha 2 |a - b| / (|a - b| + |a + b - 2c|): the mask is 1 where a - c and b - c cancel
    (a + b = 2c), 0 where a equals b. alpha scales the difference (0 gives a).
    """
    distance_ab = (a - b).abs()
    scale = _ratio(distance_ab, distance_ab + (a + b - 2 * c).abs()).mul_(2 * alpha)
    return a + (b - c) * scale


@merge_method(elementwise=True)
def clamped_add_opposite(a: Same, b: Same, c: Same, *, alpha: float = 1.0) -> Same:
    """Add b - c to a only where a and b moved from c in strictly opposite directions.

    a + (b - c) alpha 2 max(0, (c - a)(b - c) / max(|a - c|, |b - c|)^2): the mask is 0 wherever a - c
    and b - c share a sign, and at most 1 where they are opposite and equally large. alpha scales the
    difference (0 gives a).
    """
    import torch

    threshold = torch.maximum((a - c).abs(), (b - c).abs())
    scale = _ratio((c - a) * (b - c), threshold * threshold).clamp_min_(0).mul_(2 * alpha)
    return a + (b - c) * scale


@merge_method
def select_max_delta(a: Delta, b: Delta, *, alpha: float = 0.5) -> Delta:
    """Per entry, the delta whose standardised magnitude is larger.

    Each delta is standardised over its tensor, z = |x - mean(x)| / std(x) (0 when std is 0); the result
    takes a where (1 - alpha) z_a >= alpha z_b, else b. alpha in [0, 1]: 0 always takes a, 1 takes b
    wherever z_b > 0, 0.5 compares the two evenly.
    """
    import torch

    if a.numel() < 2:  # no spread to standardise by: every z is 0, and ties go to a
        return a.clone()
    return torch.where((1 - alpha) * _standardised(a) >= alpha * _standardised(b), a, b)


def _standardised(x: Tensor) -> Tensor:
    wide = computable(x)
    return ((wide - wide.mean()) / wide.std()).nan_to_num(nan=0.0).abs()


@merge_method(elementwise=True)
def multiply_quotient(a: Same, b: Same, c: Same, *, alpha: float = 1.0) -> Same:
    """Multiply a by the ratio b / c where a and b moved from c in opposite multiplicative directions.

    With l_a = log|a/c| and l_b = log|b/c|, the exponent is e = alpha max(0, -l_a l_b / max(|l_a|, |l_b|)^2)
    and the result is the real part of a (b/c)^e (complex principal power for a negative ratio), or a
    where that is undefined (zeros, infinities). alpha scales the exponent (0 gives a).
    """
    import math

    import torch

    log_a = a.abs().log() - c.abs().log()
    log_b = b.abs().log() - c.abs().log()
    threshold = torch.maximum(log_a.abs(), log_b.abs())
    exponent = _ratio(-(log_a * log_b), threshold * threshold).clamp_min_(0).mul_(alpha)
    ratio = b / c
    power = ratio.abs().pow(exponent) * torch.cos(math.pi * exponent * (ratio < 0).to(exponent.dtype))
    result = a * power
    return torch.where(result.isnan(), a, result)


METHODS: list[Any] = [train_difference, add_opposite, clamped_add_opposite, select_max_delta, multiply_quotient]
