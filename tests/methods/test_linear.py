"""weighted_sum, n_average, linear, add_difference, subtract, perpendicular_component, geometric_sum."""

from __future__ import annotations

import math

import torch

import mecha_core as mc
from mecha_methods import linear

from .conftest import close, merge_tensors, randn, t


def test_weighted_sum_ends_and_middle():
    a, b = randn(3, 4, seed=1), randn(3, 4, seed=2)
    close(linear.weighted_sum.function(a, b, alpha=0.0), a)
    close(linear.weighted_sum.function(a, b, alpha=1.0), b)
    close(linear.weighted_sum.function(a, b, alpha=0.25), 0.75 * a + 0.25 * b)


def test_weighted_sum_with_block_values_through_merge(methods):
    a = {"layers.0.weight": torch.zeros(2, 2), "layers.1.weight": torch.zeros(2, 2), "head.weight": torch.zeros(3)}
    b = {k: torch.ones_like(v) for k, v in a.items()}
    alpha = {"generic_model_block_layers_0": 0.25, "generic_model_default": 1.0}
    out = mc.merge(mc.weighted_sum(a, b, alpha=alpha), save_dtype="fp32")
    assert out["layers.0.weight"].unique().tolist() == [0.25]
    assert out["layers.1.weight"].unique().tolist() == [1.0]  # block not given: the component default
    assert out["head.weight"].unique().tolist() == [1.0]


def test_n_average_is_the_mean(methods):
    a, b, c = t(1.0, 2.0), t(3.0, -2.0), t(5.0, 9.0)
    close(linear.n_average.function(a, b, c), [3.0, 3.0])
    close(merge_tensors(mc.n_average, a, b, c), [3.0, 3.0])


def test_linear_is_mergekit_s_weighted_average():
    a, b = t(1.0, 2.0), t(5.0, -2.0)
    close(linear.linear.function(a, b, weight=(1.0, 3.0)), [(1 + 15) / 4, (2 - 6) / 4])
    close(linear.linear.function(a, b, weight=(1.0, 3.0), normalize=False), [16.0, -4.0])
    close(linear.linear.function(a, b, weight=(1.0, -1.0)), [-4.0, 4.0])  # weights summing to 0: not divided


def test_add_difference_and_subtract(methods):
    a, b, c = t(1.0, 2.0), t(4.0, 4.0), t(2.0, 1.0)
    close(linear.add_difference.function(a, b, alpha=0.5), [3.0, 4.0])
    close(linear.subtract.function(b, c), [2.0, 3.0])
    close(merge_tensors(lambda x, y, z: mc.add_difference(x, mc.subtract(y, z), alpha=2.0), a, b, c), [5.0, 8.0])


def test_perpendicular_component():
    close(linear.perpendicular_component.function(t(1.0, 0.0), t(3.0, 4.0)), [0.0, 4.0])
    a, b = randn(5, 3, seed=1), randn(5, 3, seed=2)
    result = linear.perpendicular_component.function(a, b)
    close((result * a).sum(), 0.0, atol=1e-9)  # orthogonal to a
    rest = b - result  # and what was removed is parallel to a
    close(rest / a, torch.full_like(a, float((rest / a).flatten()[0])), atol=1e-9)
    close(linear.perpendicular_component.function(torch.zeros(3, dtype=torch.float64), t(1.0, 2.0, 3.0)),
          [1.0, 2.0, 3.0])  # nothing to be orthogonal to: all of b


def test_geometric_sum_is_the_real_part_of_complex_powers():
    a = t(4.0, -4.0, 0.0, 2.0, -1.0, 3.0)
    b = t(9.0, 9.0, 5.0, 0.0, -8.0, -3.0)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        expected = [(complex(x) ** (1 - alpha) * complex(y) ** alpha).real for x, y in zip(a.tolist(), b.tolist())]
        close(linear.geometric_sum.function(a, b, alpha=alpha), expected, atol=1e-9)
    close(linear.geometric_sum.function(t(4.0), t(9.0), alpha=0.5), 6.0)
    assert math.isclose(linear.geometric_sum.function(t(-4.0), t(-9.0), alpha=0.5).item(), -6.0)
