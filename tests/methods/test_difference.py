"""train_difference, add_opposite, clamped_add_opposite, select_max_delta, multiply_quotient, entry by entry."""

from __future__ import annotations

import cmath
import math
import statistics

import mecha_core as mc
from mecha_methods import difference

from .conftest import close, merge_tensors, t

A = [1.0, 2.0, 0.0, 5.0, -3.0, 1.0]
B = [3.0, 2.0, 0.0, 1.0, 4.0, -2.0]
C = [0.0, 1.0, 0.0, 3.0, 1.0, 1.0]


def ratio(x: float, y: float) -> float:
    return 0.0 if y == 0 else x / y


def test_train_difference(methods):
    expected = [a + (b - c) * 0.5 * 1.8 * ratio(abs(b - a), abs(b - a) + abs(b - c)) for a, b, c in zip(A, B, C)]
    close(difference.train_difference.function(t(A), t(B), t(C), alpha=0.5), expected)
    close(merge_tensors(mc.train_difference, t(A), t(B), t(C), alpha=0.5), expected, atol=1e-6)
    close(difference.train_difference.function(t(A), t(A), t(C)), A)  # b == a: nothing to add


def test_add_opposite():
    expected = [a + (b - c) * 2 * ratio(abs(a - b), abs(a - b) + abs(a + b - 2 * c)) for a, b, c in zip(A, B, C)]
    close(difference.add_opposite.function(t(A), t(B), t(C)), expected)


def test_clamped_add_opposite_adds_only_where_a_and_b_moved_apart():
    def mask(a: float, b: float, c: float) -> float:
        threshold = max(abs(a - c), abs(b - c))
        return 2 * max(ratio((c - a) * (b - c), threshold ** 2), 0.0)

    expected = [a + (b - c) * 0.7 * mask(a, b, c) for a, b, c in zip(A, B, C)]
    close(difference.clamped_add_opposite.function(t(A), t(B), t(C), alpha=0.7), expected)
    same_side = difference.clamped_add_opposite.function(t(2.0), t(3.0), t(1.0))  # both above c
    close(same_side, 2.0)


def test_select_max_delta_compares_standardised_magnitudes():
    a, b = [1.0, 2.0, 3.0, 10.0], [0.0, 0.0, 5.0, 0.0]

    def z(values: list[float]) -> list[float]:
        mean, spread = statistics.mean(values), statistics.stdev(values)
        return [abs(v - mean) / spread for v in values]

    for alpha in (0.0, 0.3, 0.5, 1.0):
        expected = [x if (1 - alpha) * za >= alpha * zb else y for x, y, za, zb in zip(a, b, z(a), z(b))]
        close(difference.select_max_delta.function(t(a), t(b), alpha=alpha), expected)


def test_multiply_quotient_against_complex_arithmetic():
    a = [2.0, 4.0, -1.0, 3.0, 0.0, 1.0]
    b = [8.0, -1.0, 4.0, 3.0, 2.0, 5.0]
    c = [4.0, 2.0, 2.0, 3.0, 1.0, 0.0]
    expected = []
    for x, y, z in zip(a, b, c):
        try:
            la, lb = math.log(abs(x)) - math.log(abs(z)), math.log(abs(y)) - math.log(abs(z))
            threshold = max(abs(la), abs(lb))
            exponent = 0.8 * max(ratio(-la * lb, threshold ** 2), 0.0)
            expected.append((x * cmath.exp(exponent * cmath.log(complex(y / z)))).real)
        except (ValueError, ZeroDivisionError):  # log 0 or a zero c: undefined, a is kept
            expected.append(x)
    close(difference.multiply_quotient.function(t(a), t(b), t(c), alpha=0.8), expected)
