"""Model Stock (sd-mecha's per row, mergekit's) and the geometric median."""

from __future__ import annotations

import math

import pytest

import mecha_core as mc
from mecha_methods import stock

from .conftest import close, merge_tensors, t


def test_model_stock_for_tensor_scales_each_row_by_t(methods):
    d1, d2 = t([[1.0, 0.0], [2.0, 2.0]]), t([[0.0, 1.0], [1.0, 1.0]])
    # row 0: cos 0 -> t 0; row 1: cos 1 -> t = 2 / (1 + 1) = 1
    close(stock.model_stock_for_tensor.function(d1, d2), [[0.0, 0.0], [1.5, 1.5]])
    base = {"w": t([[0.0, 0.0], [0.0, 0.0]]).float()}
    recipe = mc.model_stock_for_tensor(mc.subtract({"w": d1.float()}, base), mc.subtract({"w": d2.float()}, base))
    close(mc.merge(recipe, save_dtype="fp32")["w"].double(), [[0.0, 0.0], [1.5, 1.5]], atol=1e-6)


def test_model_stock_for_tensor_uses_consecutive_pairs():
    # cos(d1, d2) = 1, cos(d2, d3) = 0: mean 0.5, t = 3 * 0.5 / (1 + 2 * 0.5) = 0.75 (all pairs would give 0.6)
    result = stock.model_stock_for_tensor.function(t(1.0, 0.0), t(1.0, 0.0), t(0.0, 1.0))
    close(result, [0.75 * 2 / 3, 0.75 * 1 / 3])


def test_model_stock_for_tensor_degenerate_t_keeps_the_base():
    # cos -1 between the two deltas: 1 + (n - 1) cos = 0, t would be infinite
    close(stock.model_stock_for_tensor.function(t(1.0, 2.0), t(-1.0, -2.0)), [0.0, 0.0])


def test_model_stock_mergekit(methods):
    base = t(1.0, 1.0)
    close(stock.model_stock.function(base, t(2.0, 1.0), t(1.0, 2.0)), base)  # orthogonal deltas: t = 0
    close(stock.model_stock.function(base, t(2.0, 1.0), t(3.0, 1.0)), [2.5, 1.0])  # parallel: t = 1, the mean
    c = 1 / math.sqrt(2)
    tt = 2 * c / (1 + c)
    close(stock.model_stock.function(base, t(2.0, 1.0), t(2.0, 2.0)), [1 + tt * 1.0, 1 + tt * 0.5])
    # all pairs: cos 1, 0, 0 -> mean 1/3 -> t = 1 / (1 + 2/3) = 0.6
    close(stock.model_stock.function(base, t(2.0, 1.0), t(2.0, 1.0), t(1.0, 2.0)), [1 + 0.6 * 2 / 3, 1 + 0.6 / 3])
    close(merge_tensors(mc.model_stock, base, t(2.0, 1.0), t(3.0, 1.0)), [2.5, 1.0], atol=1e-6)


def test_model_stock_filter_wise_works_per_row():
    base = t([[0.0, 0.0], [0.0, 0.0]])
    a, b = t([[1.0, 0.0], [1.0, 1.0]]), t([[0.0, 1.0], [3.0, 3.0]])
    close(stock.model_stock.function(base, a, b, filter_wise=True), [[0.0, 0.0], [2.0, 2.0]])


def test_model_stock_needs_two_models(methods):
    with pytest.raises(mc.RecipeError, match="at least 3 models"):
        mc.model_stock({"w": t(1.0)}, {"w": t(2.0)})


def test_geometric_median(methods):
    close(stock.geometric_median.function(t(0.0, 0.0), t(1.0, 1.0), t(10.0, 10.0)), [1.0, 1.0], atol=1e-4)
    square = [t(0.0, 0.0), t(2.0, 0.0), t(0.0, 2.0), t(2.0, 2.0)]
    close(stock.geometric_median.function(*square), [1.0, 1.0], atol=1e-9)
    outlier = [t(0.0, 0.0), t(0.1, 0.0), t(0.0, 0.1), t(100.0, 100.0)]
    assert merge_tensors(mc.geometric_median, *outlier).abs().max() < 0.2  # the mean would be ~25
