"""ties_sum and its extensions, dropout: worked examples, the sd-mecha flag meanings, mask statistics."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import mecha_core as mc
from mecha_methods import ties

from .conftest import close, randn, t

D1, D2, D3 = [3.0, -1.0, 0.5, 2.0], [-2.0, -2.0, 1.0, 4.0], [1.0, 3.0, -4.0, -1.0]


def test_ties_sum_elects_by_summed_values_or_by_majority(methods):
    deltas = t(D1), t(D2), t(D3)
    # sums 2, 0, -2.5, 5: signs +, none, -, +; agreeing means (3+1)/2, -, -4, (2+4)/2
    close(ties.ties_sum.function(*deltas, k=1.0), [2.0, 0.0, -4.0, 3.0])
    # signs +-+, --+, ++-, ++-: majorities +, -, +, +
    close(ties.ties_sum.function(*deltas, k=1.0, vote_sgn=1.0), [2.0, -1.5, 0.75, 3.0])
    base = {"w": torch.zeros(4)}
    recipe = mc.ties_sum(*(mc.subtract({"w": d.float()}, base) for d in deltas), k=1.0, vote_sgn=1.0)
    close(mc.merge(recipe, save_dtype="fp32")["w"].double(), [2.0, -1.5, 0.75, 3.0], atol=1e-6)


def test_ties_trim_keeps_magnitudes_from_the_m_th_smallest():
    # m = max(int((1 - k) n), 1); |D1| sorted: 0.5, 1, 2, 3
    close(ties.ties_sum.function(t(D1), k=0.5), [3.0, -1.0, 0.0, 2.0])  # m = 2: |x| >= 1
    close(ties.ties_sum.function(t(D1), k=0.25), [3.0, 0.0, 0.0, 2.0])  # m = 3: |x| >= 2
    close(ties.ties_sum.function(t(D1), k=0.0), [3.0, 0.0, 0.0, 0.0])  # m = n: the largest


def test_ties_sum_extended_with_model_stock_per_row():
    d1, d2 = t([[1.0, 0.0], [2.0, 2.0]]), t([[0.0, 1.0], [2.0, 2.0]])
    # row 0: filtered rows [1, 0] and [0, 1], cos 0, t 0; row 1: cos 1, t = 2/(1+1) = 1
    close(ties.ties_sum_extended.function(d1, d2, k=1.0, apply_stock=1.0), [[0.0, 0.0], [2.0, 2.0]])
    close(ties.ties_sum_extended.function(d1, d2, k=1.0), [[1.0, 1.0], [2.0, 2.0]])  # flags off: ties_sum


def test_ties_sum_extended_with_the_geometric_median():
    p = randn(6, seed=1).abs() + 0.5  # positive: nothing is filtered out
    result = ties.ties_sum_extended.function(p, 2 * p, 10 * p, k=1.0, apply_median=1.0)
    close(result, 2 * p, atol=1e-4)  # on a line, the median of three points is the middle one


def test_ties_sum_with_dropout_without_drops_is_ties_sum_extended():
    deltas = t(D1), t(D2), t(D3)
    close(ties.ties_sum_with_dropout.function(*deltas, probability=0.0, k=1.0),
          ties.ties_sum.function(*deltas, k=1.0))
    close(ties.ties_sum_with_dropout.function(*deltas, probability=1.0), [0.0] * 4)


@pytest.mark.parametrize("no_rescale, scale", [(0.0, 1 / 0.25), (1.0, 1.0)])
def test_ties_sum_with_dropout_rescales_unless_no_rescale(no_rescale, scale):
    delta = randn(20000, seed=3)
    result = ties.ties_sum_with_dropout.function(delta, probability=0.75, no_rescale=no_rescale, k=1.0, seed=5)
    kept = result != 0
    close(result[kept], delta[kept] * scale, atol=1e-9)
    assert abs(kept.double().mean().item() - 0.25) < 0.02


def test_dropout_independent_masks_at_overlap_one():
    delta = randn(20000, seed=1)
    result = ties.dropout.function(delta, probability=0.6, seed=2)
    kept = result != 0
    close(result[kept], delta[kept] / 0.4, atol=1e-9)
    assert abs(kept.double().mean().item() - 0.4) < 0.02


def test_dropout_disjoint_masks_at_even_overlap():
    a, b = torch.ones(20000, dtype=torch.float64), torch.full((20000,), 3.0, dtype=torch.float64)
    for overlap in (0.0, 2.0):
        result = ties.dropout.function(a, b, probability=0.5, overlap=overlap, seed=3) * 0.5
        values = set(result.unique().tolist())
        assert values == {0.0, 1.0, 3.0}  # never the mean 2: one delta per entry
        assert abs((result == 1.0).double().mean().item() - 0.25) < 0.02


def test_dropout_large_overlap_keeps_entries_in_every_delta():
    a, b = torch.ones(20000, dtype=torch.float64), torch.full((20000,), 3.0, dtype=torch.float64)
    result = ties.dropout.function(a, b, probability=0.5, overlap=0.999, seed=3) * 0.5
    assert ((result == 2.0).double().mean().item()) > 0.45  # of the half kept, nearly all in both


def per_subset_probabilities(n: int, p: float, overlap: float, emphasis: float) -> dict[tuple[int, ...], float]:
    """sd-mecha's definition: a probability for every non-empty subset of the n deltas (times 1 - p)."""
    subsets = [s for size in range(1, n + 1) for s in itertools.combinations(range(n), size)]
    logits = [math.tan(math.pi * (overlap - 0.5)) * (len(s) - n / 2) for s in subsets]
    soft = [math.exp(x) / sum(math.exp(y) for y in logits) for x in logits]
    binomial = [p ** len(s) * (1 - p) ** (n - len(s)) for s in subsets]  # binom.pmf(|S|) / C(n, |S|)
    binomial = [x / sum(binomial) for x in binomial]
    weight = 1 - abs(2 * overlap - 1)
    return {s: (1 - p) * (q + emphasis * weight * (b - q)) for s, q, b in zip(subsets, soft, binomial)}


def test_dropout_subset_sizes_match_the_per_subset_definition():
    n, p, overlap, emphasis = 4, 0.6, 0.3, 0.5
    per_subset = per_subset_probabilities(n, p, overlap, emphasis)
    by_size = [p] + [sum(q for s, q in per_subset.items() if len(s) == size) for size in range(1, n + 1)]
    close(ties._subset_size_distribution(n, p, overlap, emphasis), by_size, atol=1e-12)


def test_dropout_draws_each_subset_as_often_as_defined():
    deltas = [torch.full((60000,), v, dtype=torch.float64) for v in (1.0, 10.0, 100.0)]
    p, overlap, emphasis = 0.3, 0.3, 0.5
    result = ties.dropout.function(*deltas, probability=p, overlap=overlap, overlap_emphasis=emphasis, seed=9)
    values = (result * (1 - p)).tolist()
    for subset, probability in per_subset_probabilities(3, p, overlap, emphasis).items():
        mean = sum((1.0, 10.0, 100.0)[i] for i in subset) / len(subset)  # distinct for every subset
        frequency = sum(1 for v in values if abs(v - mean) < 1e-9) / len(values)
        assert abs(frequency - probability) < 0.01, subset


def test_dropout_scales_to_many_deltas():
    deltas = [torch.full((50,), float(i)) for i in range(200)]
    result = ties.dropout.function(*deltas, probability=0.5, overlap=0.5, seed=1)
    assert result.shape == (50,) and bool(torch.isfinite(result).all())
