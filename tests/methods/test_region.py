"""tensor_sum, top_k_tensor_sum and the region their width and offset select."""

from __future__ import annotations

import torch

import mecha_core as mc
from mecha_methods import region

from .conftest import close, merge_tensors, t


def test_region_examples():
    assert region.region(0.5, 0.0, 10) == (0, 5, False)
    assert region.region(0.5, 0.75, 8) == (2, 6, True)  # wraps: [6, 8) + [0, 2)
    assert region.region(-0.25, 0.5, 8) == (2, 4, False)  # negative width ends at the offset
    assert region.region(0.25, -0.25, 8) == (6, 8, False)  # negative offset counts from the end
    assert region.region(3.0, 0.0, 8) == (0, 8, False)  # width at most 1


def test_tensor_sum_copies_rows_of_b(methods):
    a, b = torch.zeros(8, 2, dtype=torch.float64), torch.ones(8, 2, dtype=torch.float64)
    rows = lambda *indices: [[1.0, 1.0] if i in indices else [0.0, 0.0] for i in range(8)]  # noqa: E731
    close(region.tensor_sum.function(a, b, width=0.5, offset=0.25), rows(2, 3, 4, 5))
    close(region.tensor_sum.function(a, b, width=0.5, offset=0.75), rows(6, 7, 0, 1))
    close(merge_tensors(mc.tensor_sum, a, b, width=0.25, offset=0.0), rows(0, 1), atol=0)
    close(region.tensor_sum.function(t(1.0), t(2.0), width=0.6), 2.0)
    close(region.tensor_sum.function(t(1.0), t(2.0), width=0.4), 1.0)


def test_top_k_tensor_sum_gives_a_s_values_b_s_order():
    a, b = t(1.0, -3.0, 2.0, 4.0), t(10.0, 40.0, 20.0, 30.0)
    # b's ranks 0, 3, 1, 2 receive a's sorted values -3, 1, 2, 4
    close(region.top_k_tensor_sum.function(a, b, width=1.0), [-3.0, 4.0, 1.0, 2.0])
    close(region.top_k_tensor_sum.function(a, b, width=0.0), a)
    # band: magnitudes from the 0th (none) to the 2nd smallest (|1|, |2|): only positions given 1 or 2 change
    close(region.top_k_tensor_sum.function(a, b, width=0.5), [1.0, -3.0, 1.0, 2.0])
