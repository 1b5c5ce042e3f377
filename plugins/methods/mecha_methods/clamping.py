"""Clamping a model into the range other models span."""

from __future__ import annotations

from typing import Any

from mecha_core import Same, merge_method


@merge_method(elementwise=True)
def clamp(a: Same, *bounds: Same, stiffness: float = 0.0) -> Same:
    """Clamp a, entry by entry, into the range spanned by the bounds: min(max(a, lowest), highest).

    stiffness in [0, 1] narrows that range towards its centre c = (lowest + highest) / 2: the upper
    limit moves from the highest bound towards the smallest bound at or above c, the lower one from the
    lowest bound towards the largest bound at or below c (1 moves them all the way). With one bound, a
    is replaced by it; with none, a is unchanged. add_difference(a, b, c) clamps its result to a and b
    this way by default.
    """
    import torch

    if not bounds:
        return a.clone()
    highest, lowest = bounds[0], bounds[0]
    for bound in bounds[1:]:
        highest = torch.maximum(highest, bound)
        lowest = torch.minimum(lowest, bound)
    if stiffness:
        centre = (highest + lowest) / 2
        inner_high, inner_low = highest, lowest
        for bound in bounds:
            inner_high = torch.where((bound >= centre) & (bound <= inner_high), bound, inner_high)
            inner_low = torch.where((bound <= centre) & (bound >= inner_low), bound, inner_low)
        highest = highest.lerp(inner_high, stiffness)
        lowest = lowest.lerp(inner_low, stiffness)
    return torch.minimum(torch.maximum(a, lowest), highest)


METHODS: list[Any] = [clamp]
