"""add_cosine_a and add_cosine_b, against per-column cosines computed by hand."""

from __future__ import annotations

import math

import torch

import mecha_core as mc
from mecha_methods import cosine

from .conftest import close, merge_tensors, randn, t


def column_cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    out = []
    for j in range(a.shape[1]):
        x, y = a[:, j].tolist(), b[:, j].tolist()
        dot = sum(p * q for p, q in zip(x, y))
        out.append(dot / (math.sqrt(sum(p * p for p in x)) * math.sqrt(sum(q * q for q in y))))
    return out


def expected(a: torch.Tensor, b: torch.Tensor, similarity: list[float], alpha: float) -> torch.Tensor:
    out = a.clone()
    for j, s in enumerate(similarity):
        k = 1 - min(max(s - alpha, 0.0), 1.0)
        out[:, j] = (1 - k) * a[:, j] + k * b[:, j]
    return out


def test_add_cosine_a_interpolates_each_column_by_its_cosine(methods):
    a, b = randn(4, 3, seed=1), randn(4, 3, seed=2)
    b[:, 0] = 2 * a[:, 0]  # a column pointing the same way: cos 1
    sims = column_cosines(a, b)
    assert math.isclose(sims[0], 1.0)
    for alpha in (-0.5, 0.2, 0.9):
        close(cosine.add_cosine_a.function(a, b, alpha=alpha), expected(a, b, sims, alpha), atol=1e-9)
    close(merge_tensors(mc.add_cosine_a, a, b, alpha=0.2), expected(a, b, sims, 0.2), atol=1e-6)


def test_add_cosine_b_mixes_column_and_whole_tensor_cosines():
    a, b = randn(4, 3, seed=3), randn(4, 3, seed=4)
    whole = float((a * b).sum() / (a.norm() * b.norm()))
    sims = [(s + whole) / 2 for s in column_cosines(a, b)]
    close(cosine.add_cosine_b.function(a, b, alpha=0.1), expected(a, b, sims, 0.1), atol=1e-9)


def test_a_vector_is_one_column():
    a, b = t(1.0, 0.0), t(0.0, 1.0)  # orthogonal: cos 0, k = 1 - clamp(0 - alpha) = 1 for alpha >= 0
    close(cosine.add_cosine_a.function(a, b, alpha=0.5), b)
    close(cosine.add_cosine_a.function(a, 2 * a, alpha=0.5), a + 0.5 * (2 * a - a))  # cos 1: k = 0.5
