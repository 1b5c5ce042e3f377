"""mergekit's task-arithmetic family: worked examples, per-model weights, drop statistics."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_methods import task_arithmetic as ta

from .conftest import close, merge_tensors, randn, t

BASE = t(0.0, 0.0, 0.0, 0.0)
M1, M2 = t(3.0, -1.0, 0.5, 2.0), t(-2.0, -2.5, 1.0, 4.0)


def test_task_arithmetic(methods):
    base, a, b = t(1.0, 1.0), t(2.0, 0.0), t(4.0, 3.0)
    close(ta.task_arithmetic.function(base, a, b, weight=(1.0, 0.5), lambda_=2.0), [1 + 2 * (1 + 1.5), 1 + 2 * (-1 + 1)])
    close(ta.task_arithmetic.function(base, a, b, weight=(1.0, 3.0), normalize=True), [1 + (1 + 9) / 4, 1 + (-1 + 6) / 4])
    close(merge_tensors(mc.task_arithmetic, base, a, b, weight=[1.0, 0.5], lambda_=2.0), [6.0, 1.0], atol=1e-6)


def test_ties_merge_worked_example(methods):
    # density 1: sums 1, -3.5, 1.5, 6 elect +, -, +, +; M2's -2 disagrees
    close(ta.ties_merge.function(BASE, M1, M2), [3.0, (-1 - 2.5) / 2, 0.75, 3.0])
    # density 0.5 keeps two entries each: M1 -> 3, 2; M2 -> -2.5, 4; the zero sum elects +
    close(ta.ties_merge.function(BASE, M1, M2, density=(0.5, 0.5)), [3.0, -2.5, 0.0, 3.0])
    # weights 2, 1: weighted sums 6, -2.5, 0, 8, divided by the agreeing weights 2, 1, (none), 3
    close(ta.ties_merge.function(BASE, M1, M2, weight=(2.0, 1.0), density=(0.5, 0.5)), [3.0, -2.5, 0.0, 8 / 3])
    close(ta.ties_merge.function(BASE, M1, M2, density=(0.5, 0.5), normalize=False, lambda_=0.5),
          [1.5, -1.25, 0.0, 3.0])
    close(merge_tensors(mc.ties_merge, BASE, M1, M2, weight=[2.0, 1.0], density=0.5), [3.0, -2.5, 0.0, 8 / 3], atol=1e-6)


def test_ties_merge_density_edges():
    close(ta.ties_merge.function(BASE, M1, density=(0.0,)), BASE)
    close(ta.ties_merge.function(BASE, M1, density=(0.01,)), [3.0, 0.0, 0.0, 0.0])  # at least one entry


@pytest.mark.parametrize("chunk", [2, 3, 1 << 20])
def test_ties_merge_keeps_exactly_k_with_equal_magnitudes_in_index_order(monkeypatch, chunk):
    # 8 entries, density 0.5: k = 4 -> 3 and 2, then the first two of the four magnitude-1 entries
    monkeypatch.setattr(ta, "CHUNK", chunk)
    base = t(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    model = t(1.0, 3.0, -1.0, 0.5, 2.0, 1.0, -1.0, 0.25)
    close(ta.ties_merge.function(base, model, density=(0.5,)), [1.0, 3.0, -1.0, 0.0, 2.0, 0.0, 0.0, 0.0])
    close(ta.ties_merge.function(base.reshape(2, 4), model.reshape(2, 4), density=(0.5,)).reshape(-1),
          [1.0, 3.0, -1.0, 0.0, 2.0, 0.0, 0.0, 0.0])
    close(ta.ties_merge.function(base, model, density=(0.25,)), [0.0, 3.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0])


def test_ties_merge_in_chunks_equals_one_chunk(monkeypatch):
    base, a, b = randn(5000, seed=1), randn(5000, seed=2), randn(5000, seed=3)
    whole = ta.ties_merge.function(base, a, b, density=(0.3, 0.6), weight=(1.0, 0.7))
    monkeypatch.setattr(ta, "CHUNK", 333)
    assert torch.equal(ta.ties_merge.function(base, a, b, density=(0.3, 0.6), weight=(1.0, 0.7)), whole)
    kept = (ta.ties_merge.function(base, a, density=(0.3,)) != base).sum().item()
    assert kept == 1500


def test_dare_keeps_density_and_rescales_by_it():
    base, model = torch.zeros(20000, dtype=torch.float64), randn(20000, seed=1)
    result = ta.dare.function(base, model, density=(0.3,), seed=4)
    kept = result != 0
    close(result[kept], model[kept] / 0.3)
    assert abs(kept.double().mean().item() - 0.3) < 0.02
    plain = ta.dare.function(base, model, density=(0.3,), rescale=False, seed=4)
    close(plain[kept], model[kept])
    close(ta.dare.function(base, model, density=(1.0,)), model)
    close(ta.dare.function(base, model, density=(0.0,)), base)


def test_dare_ties_sums_the_agreeing_without_dividing():
    close(ta.dare_ties.function(BASE, M1, M2), [3.0, -3.5, 1.5, 6.0])
    close(ta.dare_ties.function(BASE, M1, M2, normalize=True), ta.ties_merge.function(BASE, M1, M2))


def test_della_keep_probability_follows_the_magnitude_rank():
    rows = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0], dtype=torch.float64).repeat(8000, 1)
    base = torch.zeros_like(rows)
    result = ta.della_linear.function(base, rows, density=(0.5,), epsilon=(0.2,), seed=7)
    keep_probability = [0.3, 0.4, 0.5, 0.6, 0.7]  # d - eps + 2 eps r / (n - 1)
    for column, p in enumerate(keep_probability):
        kept = result[:, column] != 0
        assert abs(kept.double().mean().item() - p) < 0.02, column
        close(result[kept, column], rows[kept, column] / p)


def test_della_checks_its_range_and_elects_signs():
    with pytest.raises(mc.MergeError, match="della.s density 0.9 \\+/- epsilon 0.15"):
        ta.della.function(BASE, M1, density=(0.9,), epsilon=(0.15,))
    close(ta.della.function(BASE, M1, M2), ta.ties_merge.function(BASE, M1, M2))  # density 1: nothing dropped
    close(ta.della_linear.function(BASE, M1, M2), M1 + M2)


def test_breadcrumbs_drops_the_largest_and_the_smallest():
    base, model = torch.zeros(10, dtype=torch.float64), torch.arange(1.0, 11.0, dtype=torch.float64)
    keep = lambda *values: [float(v) if v in values else 0.0 for v in range(1, 11)]  # noqa: E731
    # 10 entries, density 0.5, gamma 0.2: 2 largest dropped, 5 kept, so the 3 smallest dropped
    close(ta.breadcrumbs.function(base, model, density=(0.5,), gamma=(0.2,)), keep(4, 5, 6, 7, 8))
    close(ta.breadcrumbs.function(base, model, density=(0.5,), gamma=(0.0,)), keep(6, 7, 8, 9, 10))
    close(ta.breadcrumbs.function(base, model, density=(0.9,), gamma=(0.2,)), keep(*range(1, 10)))
    close(ta.breadcrumbs.function(base, model, density=(1.0,)), model)


def test_breadcrumbs_ties_elects_signs():
    close(ta.breadcrumbs_ties.function(BASE, M1, M2, density=(1.0, 1.0)), [3.0, -3.5, 1.5, 6.0])


def test_sce_worked_example(methods):
    a, b = t(1.0, 2.0, -1.0, 0.0), t(3.0, -2.0, -1.0, 0.0)
    # energies 1.5 and 3.5: weights 0.3, 0.7; sums 4, 0, -2, 0 elect +, +, -, +
    close(ta.sce.function(BASE, a, b), [2.4, 2.0, -1.0, 0.0])
    # variances 1, 4, 0, 0: two nonzero, top half keeps entry 1 only
    close(ta.sce.function(BASE, a, b, select_topk=0.5), [0.0, 2.0, 0.0, 0.0])
    close(merge_tensors(mc.sce, BASE, a, b), [2.4, 2.0, -1.0, 0.0], atol=1e-6)
