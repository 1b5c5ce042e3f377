"""Copy a region of one model into another: by position along dim 0, or by magnitude rank."""

from __future__ import annotations

import math
from typing import Any

from mecha_core import Same, merge_method

from .tensor_ops import Tensor, computable


def region(width: float, offset: float, n: int) -> tuple[int, int, bool]:
    """The index range [start, end) of n items that `width` and `offset` select, and whether it wraps.

    width is a fraction of n (negative: the region ends at offset instead of starting there; at most 1),
    offset the fraction where it starts, taken modulo 1. A region running past the end wraps around:
    then (start, end, True) is the part *outside* it, i.e. the region is [end, n) + [0, start).
    Bounds are rounded to the nearest index, ties to even.
    """
    if width < 0:
        offset += width
        width = -width
    width = min(width, 1.0)
    if offset < 0:
        offset = 1 + offset - int(offset)
    offset = math.fmod(offset, 1.0)
    if width + offset <= 1:
        return round(offset * n), round((width + offset) * n), False
    return round((width + offset - 1) * n), round(offset * n), True


@merge_method
def tensor_sum(a: Same, b: Same, *, width: float = 0.5, offset: float = 0.0) -> Same:
    """Copy a slice of b into a along dim 0: the rows from offset to offset + width (fractions).

    width, offset: fractions of dim 0 (see copy_region); a region past the end wraps around to the
    start. The rest comes from a. A 0-d tensor is taken from b when width > 0.5, else from a.
    """
    if a.dim() == 0:
        return (b if width > 0.5 else a).clone()
    start, end, wraps = region(width, offset, a.shape[0])
    inside, outside = (a, b) if wraps else (b, a)
    result = outside.clone()
    result[start:end] = inside[start:end]
    return result


@merge_method
def top_k_tensor_sum(a: Same, b: Same, *, width: float = 0.5, offset: float = 0.0) -> Same:
    """Give a band of a's values the order of b: a's values rearranged into b's rank order.

    Sort a's values; the value of rank r goes where b has its r-th smallest value. That rearranged
    value replaces a's own at the positions whose assigned value lies in the magnitude band selected
    by width and offset (fractions of the entries ranked by |a|, as in tensor_sum; width 1 rearranges
    all of a, 0 returns a).
    """
    import torch

    n = a.numel()
    if n == 0:
        return a.clone()
    values = computable(a).reshape(-1)
    sorted_values = values.sort().values
    rank_in_b = computable(b).reshape(-1).argsort(stable=True).argsort()
    magnitude = sorted_values.abs()
    start, end, wraps = region(width, offset, n)
    low, high = _kth_magnitude(magnitude, start), _kth_magnitude(magnitude, end)
    band = (low <= magnitude) & (magnitude <= high)
    if wraps:
        band = ~band
    take = band[rank_in_b]
    rearranged = sorted_values[rank_in_b]
    return torch.where(take, rearranged, values).reshape(a.shape).to(a.dtype)


def _kth_magnitude(magnitude: Tensor, k: int) -> Tensor:
    """The k-th smallest magnitude (1-based); -1 for k <= 0, below every magnitude."""
    import torch
    if k <= 0:
        return torch.tensor(-1.0, dtype=magnitude.dtype, device=magnitude.device)
    return magnitude.kthvalue(min(k, magnitude.numel())).values


METHODS: list[Any] = [tensor_sum, top_k_tensor_sum]
