"""sd-mecha's recipe helpers: the sub-recipes they build, merged on dict models."""

from __future__ import annotations

import inspect

import pytest
import torch

import mecha_core as mc
import mecha_methods
from mecha_methods import helpers

from .conftest import close, t


def merged(recipe) -> torch.Tensor:
    return mc.merge(recipe, save_dtype="fp32", work_dtype="fp64")["w"].double()


def m(*values: float) -> dict:
    return {"w": t(*values).float()}


A, B, C = m(1.0, 2.0, 5.0), m(3.0, 1.0, 6.0), m(2.0, 2.0, 2.0)


def test_add_difference_with_c_is_clamped_to_a_and_b_by_default(methods):
    # a + 2 (b - c) = 3, -0, 13; clamped between a and b: 3, 1, 6
    close(merged(mecha_methods.add_difference(A, B, C, alpha=2.0)), [3.0, 1.0, 6.0])
    close(merged(helpers.add_difference(A, B, C, alpha=2.0, clamp_to_ab=False)), [3.0, 0.0, 13.0])


def test_add_difference_of_a_delta_is_the_method(methods):
    delta = mc.subtract(B, C)
    assert helpers.add_difference(A, delta, alpha=0.5) == mc.add_difference(A, delta, alpha=0.5)
    with pytest.raises(mc.RecipeError, match="clamp_to_ab needs a and b in one merge space"):
        helpers.add_difference(A, delta, clamp_to_ab=True)


def test_add_perpendicular(methods):
    a, b, c = m(2.0, 0.0), m(1.0, 3.0), m(0.0, 0.0)
    # a - c = (2, 0), b - c = (1, 3): the part of b - c orthogonal to a - c is (0, 3)
    close(merged(helpers.add_perpendicular(a, b, c, alpha=0.5)), [2.0, 1.5])


def test_add_difference_ties_and_ties_with_dare(methods):
    base = m(0.0, 0.0, 0.0, 0.0)
    models = m(3.0, -1.0, 0.5, 2.0), m(-2.0, -2.0, 1.0, 4.0), m(1.0, 3.0, -4.0, -1.0)
    ties = [2.0, 0.0, -4.0, 3.0]  # the ties_sum worked example, k = 1
    close(merged(helpers.add_difference_ties(base, *models, alpha=0.5, k=1.0)), [0.5 * x for x in ties])
    close(merged(helpers.ties_with_dare(base, *models, probability=0.0, k=1.0)), [0.5 * x for x in ties])


def test_model_stock_n_models(methods):
    base = m(1.0, 1.0)
    # deltas (1, 0) and (1, 0): cos 1, t 1, base + mean delta
    close(merged(helpers.model_stock_n_models(base, m(2.0, 1.0), m(2.0, 1.0))), [2.0, 1.0])


def test_copy_region_and_rotate_with_c(methods):
    a = {"w": torch.zeros(4, 2)}
    b = {"w": torch.ones(4, 2)}
    c = {"w": torch.full((4, 2), 5.0)}
    close(merged(helpers.copy_region(a, b, width=0.5)), [[1.0, 1.0]] * 2 + [[0.0, 0.0]] * 2)
    close(merged(helpers.copy_region(a, b, c, width=0.5)), [[1.0, 1.0]] * 2 + [[0.0, 0.0]] * 2)
    x, y = {"w": torch.randn(6, 3)}, {"w": torch.randn(6, 3)}
    close(merged(helpers.rotate(x, y, c={"w": torch.randn(6, 3)}, alignment=1.0, alpha=1.0)), y["w"].double(),
          atol=1e-5)


def test_models_already_in_delta_space_are_not_subtracted_again(methods):
    base = m(1.0, 1.0)
    delta = mc.subtract(m(3.0, 1.0), base)
    recipe = helpers.add_difference_ties(base, delta, m(3.0, 1.0), alpha=1.0, k=1.0)
    close(merged(recipe), [3.0, 1.0])


def test_helpers_default_to_no_device():
    for name in helpers.__all__:
        parameters = inspect.signature(getattr(helpers, name)).parameters
        assert parameters["device"].default is None, name
