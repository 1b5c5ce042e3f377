"""clamp: the bounds' range, narrowed by stiffness."""

from __future__ import annotations

import mecha_core as mc
from mecha_methods import clamping

from .conftest import close, merge_tensors, t

A = t(-1.0, 4.5, 12.0)
BOUNDS = [t(0.0, 0.0, 0.0), t(1.0, 1.0, 1.0), t(4.0, 4.0, 4.0), t(10.0, 10.0, 10.0)]


def test_clamp_to_the_range_of_the_bounds(methods):
    close(clamping.clamp.function(A, *BOUNDS), [0.0, 4.5, 10.0])
    close(merge_tensors(mc.clamp, A, *BOUNDS), [0.0, 4.5, 10.0], atol=1e-6)


def test_stiffness_narrows_towards_the_bounds_nearest_the_centre():
    # centre 5: the nearest bounds around it are 4 and 10
    close(clamping.clamp.function(A, *BOUNDS, stiffness=1.0), [4.0, 4.5, 10.0])
    close(clamping.clamp.function(A, *BOUNDS, stiffness=0.5), [2.0, 4.5, 10.0])


def test_one_bound_or_none():
    close(clamping.clamp.function(A, t(1.0, 1.0, 1.0)), [1.0, 1.0, 1.0])
    close(clamping.clamp.function(A), A)
