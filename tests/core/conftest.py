"""A toy architecture and four small merge methods, registered for core tests.

The methods are defined here, not taken from mecha-methods, so that the core is tested alone. They
cover what the core must handle: two models in one space (``weighted_sum``), any number of models
read in their stored dtype (``n_average``), a result in delta space (``subtract``) and an input in
delta space, declared a linear combination (``add_difference``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mecha_core as mc
from mecha_core import Delta, Same, Weight

TOY_KEYS = {
    # name: (shape, component, blocks, class, merged)
    "embed.weight": ((6, 4), "body", ("b0",), "embed", True),
    "layers.0.weight": ((4, 4), "body", ("b0",), "linear", True),
    "layers.0.bias": ((4,), "body", ("b0",), "linear", True),
    "layers.1.weight": ((4, 4), "body", ("b1",), "linear", True),
    "layers.1.norm.weight": ((4,), "body", ("b1",), "norm", True),
    "head.weight": ((3, 4), "head", ("h",), "out", True),
    "decoder.weight": ((2, 2), "vae", (), None, False),
    "step": ((), "buffers", (), None, False),
}


def toy_keys():
    for name, (shape, component, blocks, class_, merged) in TOY_KEYS.items():
        dtype = "int64" if name == "step" else "float32"
        yield mc.KeySpec(name, shape, dtype, component, blocks, class_, merged=merged)


TOY = mc.Architecture("toy", (mc.Component("body", ("b0", "b1")), mc.Component("head", ("h",))), toy_keys,
                      summary="a toy architecture for tests")


@mc.merge_method(elementwise=True)
def weighted_sum(a: Same, b: Same, *, alpha: float = 0.5) -> Same:
    """(1 - alpha) a + alpha b."""
    return a.lerp(b, alpha)


@mc.merge_method(elementwise=True, stored_inputs=True)
def n_average(*models: Same, dtype: Any = None) -> Same:
    """The mean of any number of models, each read in the dtype its file stores."""
    return sum(model.to(dtype) for model in models) / len(models)


@mc.merge_method(elementwise=True, coefficients=lambda count: (1.0, -1.0))
def subtract(a: Weight, b: Weight) -> Delta:
    """a - b."""
    return a - b


@mc.merge_method(elementwise=True, coefficients=lambda count, alpha: (1.0, alpha))
def add_difference(a: Same, b: Delta, *, alpha: float = 1.0) -> Same:
    """a + alpha b."""
    return a + alpha * b


CORE_METHODS = [weighted_sum, n_average, subtract, add_difference]


class ToyPlugin:
    @mc.hookimpl
    def mecha_architectures(self):
        return [TOY]


class MethodsPlugin:
    @mc.hookimpl
    def mecha_merge_methods(self):
        return CORE_METHODS


def toy_model(fill: float | None = None, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, (shape, *_rest) in TOY_KEYS.items():
        if name == "step":
            out[name] = torch.tensor(7 + seed)
        elif fill is not None:
            out[name] = torch.full(shape, float(fill), dtype=dtype)
        else:
            out[name] = torch.randn(shape, generator=generator).to(dtype)
    return out


@pytest.fixture
def plugins(mecha_plugins):
    mecha_plugins.register(MethodsPlugin(), "methods")
    mecha_plugins.register(ToyPlugin(), "toy")
    return mecha_plugins
