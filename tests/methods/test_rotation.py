"""rotate: recovering a known rotation, fractional and integer alignment, neuron layouts, the cache."""

from __future__ import annotations

import math

import torch

import mecha_core as mc
from mecha_methods import rotation

from .conftest import close, randn, t


def rotated(a: torch.Tensor, q: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """a's neurons (rows), centred, turned by q, then moved to `shift`."""
    return (a - a.mean(dim=0)) @ q + shift


def plane_rotation(angle: float) -> torch.Tensor:
    return t([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])


def test_alignment_one_recovers_the_rotation_onto_b():
    a = randn(10, 4, seed=1)
    q, _ = torch.linalg.qr(randn(4, 4, seed=2))
    b = rotated(a, q, randn(4, seed=3))
    close(rotation.rotate.function(a, b), b, atol=1e-9)
    close(rotation.rotate.function(a, randn(10, 4, seed=4), alignment=0.0, alpha=0.0), a)


def test_alignment_one_and_alpha_one_give_b():
    a, b = randn(6, 5, seed=1), randn(6, 5, seed=2)
    close(rotation.rotate.function(a, b, alignment=1.0, alpha=1.0), b, atol=1e-9)


def test_fractional_and_integer_alignment_in_the_plane():
    a = randn(12, 2, seed=5)
    shift_a, shift_b = a.mean(dim=0), t(3.0, -1.0)
    b = rotated(a, plane_rotation(math.radians(60)), shift_b)
    half = rotated(a, plane_rotation(math.radians(30)), (shift_a + shift_b) / 2)
    close(rotation.rotate.function(a, b, alignment=0.5), half, atol=1e-9)
    twice = rotated(a, plane_rotation(math.radians(120)), shift_a + 2 * (shift_b - shift_a))
    close(rotation.rotate.function(a, b, alignment=2.0), twice, atol=1e-9)


def test_neuron_layouts_of_convolutions():
    a = randn(6, 3, 1, 1, seed=1)  # 1x1 convolution: neurons are the 6 output rows of (6, 3)
    q, _ = torch.linalg.qr(randn(3, 3, seed=2))
    b = rotated(a.reshape(6, 3), q, randn(3, seed=3)).reshape(6, 3, 1, 1)
    close(rotation.rotate.function(a, b), b, atol=1e-9)
    kernels = randn(4, 5, 3, 3, seed=4)  # a larger kernel: each (out, in) pair's 3x3 kernel is a neuron
    q, _ = torch.linalg.qr(randn(9, 9, seed=5))
    b = rotated(kernels.reshape(20, 9), q, randn(9, seed=6)).reshape(4, 5, 3, 3)
    close(rotation.rotate.function(kernels, b), b, atol=1e-9)


def test_vectors_are_interpolated():
    close(rotation.rotate.function(t(1.0, 2.0), t(3.0, 6.0), alpha=0.5), [2.0, 4.0])


def test_the_cache_keeps_decompositions_between_calls(methods, monkeypatch):
    a, b = randn(8, 3, seed=1), randn(8, 3, seed=2)
    store: dict = {}
    first = rotation.rotate.function(a, b, alignment=0.5, cache=store)
    assert {"proper_rotation", "eigen"} <= set(store)

    def no_svd(*args, **kwargs):
        raise AssertionError("the cached rotation should have been used")

    monkeypatch.setattr(rotation, "_procrustes", no_svd)
    close(rotation.rotate.function(a, b, alignment=0.5, cache=store), first, atol=1e-12)
    monkeypatch.undo()
    cache: dict = {}
    models = [{"w": a.float()}, {"w": b.float()}]
    out = mc.merge(mc.rotate(*models, alignment=0.5), cache=cache, save_dtype="fp32")
    assert cache and all("proper_rotation" in entry for entry in cache.values())
    close(out["w"].double(), first, atol=1e-5)


def test_a_cache_entry_from_other_tensors_is_not_reused():
    a, b, other = randn(8, 3, seed=1), randn(8, 3, seed=2), randn(8, 3, seed=3)
    store: dict = {}
    rotation.rotate.function(a, b, cache=store)
    close(rotation.rotate.function(a, other, cache=store), rotation.rotate.function(a, other), atol=1e-12)
