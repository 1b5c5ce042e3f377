"""Interpolation driven by cosine similarity (supermerger's cosineA and cosineB)."""

from __future__ import annotations

from typing import Any

from mecha_core import Weight, merge_method

from .tensor_ops import Tensor, computable


def _cosine(x: Tensor, y: Tensor, dim: int | None) -> Tensor:
    """<x, y> / max(|x| |y|, 1e-8) along `dim` (None: over the whole tensors)."""
    import torch
    dims = () if dim is None else (dim,)
    dot = (x * y).sum(dim=dims) if dims else (x * y).sum()
    norms = (torch.linalg.vector_norm(x, dim=dims) * torch.linalg.vector_norm(y, dim=dims)) if dims else (
        torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y))
    return dot / norms.clamp_min(1e-8)


def _interpolate(a: Tensor, b: Tensor, similarity: Tensor, alpha: float) -> Tensor:
    """lerp(a, b, 1 - clamp(similarity - alpha, 0, 1)): the less similar, the more of b."""
    share = 1 - (similarity - alpha).clamp(0, 1)
    return computable(a).lerp(computable(b), share.to(computable(a).dtype)).to(a.dtype)


@merge_method
def add_cosine_a(a: Weight, b: Weight, *, alpha: float = 0.5) -> Weight:
    """Interpolate towards b where a and b point apart, column by column (supermerger's cosineA).

    For each column (each slice along dim 0; a vector is one column) s = cos(a, b), and the result is
    (1 - k) a + k b with k = 1 - clamp(s - alpha, 0, 1): a column whose similarity exceeds alpha by 1 or
    more stays a, one at or below alpha becomes b. alpha in [-1, 1] (sd-mecha 0.0.x had no default).
    """
    x, y = computable(a), computable(b)
    if x.dim() == 0:
        x, y = x.reshape(1), y.reshape(1)
    return _interpolate(a, b, _cosine(x, y, 0).reshape(a.shape[1:]), alpha)


@merge_method
def add_cosine_b(a: Weight, b: Weight, *, alpha: float = 0.5) -> Weight:
    """Interpolate towards b where a and b point apart, columns and whole tensor (supermerger's cosineB).

    As add_cosine_a with s = (cos(a, b) of each column + cos(a, b) of the whole tensors) / 2.
    alpha in [-1, 1] (sd-mecha 0.0.x had no default).
    """
    x, y = computable(a), computable(b)
    if x.dim() == 0:
        x, y = x.reshape(1), y.reshape(1)
    similarity = (_cosine(x, y, 0) + _cosine(x, y, None)) / 2
    return _interpolate(a, b, similarity.reshape(a.shape[1:]), alpha)


METHODS: list[Any] = [add_cosine_a, add_cosine_b]
