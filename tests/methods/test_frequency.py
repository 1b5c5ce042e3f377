"""crossover and distribution_crossover: a constant (only DC) against an alternating pattern (only Nyquist)."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_methods import frequency

from .conftest import close, merge_tensors, randn

ALTERNATING = torch.tensor([(-1.0) ** i for i in range(8)], dtype=torch.float64)
CHECKER = torch.tensor([[(-1.0) ** (i + j) for j in range(6)] for i in range(4)], dtype=torch.float64)


def test_hard_cut_takes_low_frequencies_from_a_and_high_from_b(methods):
    constant = torch.full((8,), 3.0, dtype=torch.float64)
    close(frequency.crossover.function(constant, ALTERNATING, alpha=0.5), constant + ALTERNATING)
    close(frequency.crossover.function(ALTERNATING, constant, alpha=0.5), torch.zeros(8, dtype=torch.float64))
    grid = torch.full((4, 6), 2.0, dtype=torch.float64)
    close(frequency.crossover.function(grid, CHECKER, alpha=0.5), grid + CHECKER)
    close(merge_tensors(mc.crossover, grid, CHECKER, alpha=0.5), grid + CHECKER, atol=1e-6)


def test_tilt_two_takes_low_frequencies_from_b():
    constant = torch.full((8,), 3.0, dtype=torch.float64)
    close(frequency.crossover.function(ALTERNATING, constant, alpha=0.5, tilt=2.0), constant + ALTERNATING)


def test_crossover_ends_and_weighted_sum_at_tilt_one():
    a, b = randn(4, 5, seed=1), randn(4, 5, seed=2)
    close(frequency.crossover.function(a, b, alpha=0.0), a)
    close(frequency.crossover.function(a, b, alpha=1.0), b)
    close(frequency.crossover.function(a, b, alpha=0.3, tilt=1.0), 0.7 * a + 0.3 * b)
    close(frequency.crossover.function(a, b, alpha=0.3, tilt=3.0), 0.7 * a + 0.3 * b, atol=1e-9)


def test_crossover_refuses_alpha_outside_the_unit_range(methods):
    with pytest.raises(mc.MechaError, match="key 'w': the crossover's alpha must be in"):
        merge_tensors(mc.crossover, randn(4, seed=1), randn(4, seed=2), alpha=1.5)


def test_distribution_crossover_works_in_the_order_of_c(methods):
    c = randn(8, seed=3)
    rank = c.argsort().argsort()
    alternating_in_c_order = torch.tensor([(-1.0) ** int(r) for r in rank], dtype=torch.float64)
    constant = torch.full((8,), 3.0, dtype=torch.float64)
    expected = constant + alternating_in_c_order
    close(frequency.distribution_crossover.function(constant, alternating_in_c_order, c, alpha=0.5), expected)
    close(merge_tensors(mc.distribution_crossover, constant, alternating_in_c_order, c), expected, atol=1e-6)
    a, b = randn(3, 3, seed=1), randn(3, 3, seed=2)
    close(frequency.distribution_crossover.function(a, b, randn(3, 3, seed=5), alpha=0.25, tilt=1.0),
          0.75 * a + 0.25 * b)
    close(frequency.distribution_crossover.function(a, b, a, alpha=0.0), a)
