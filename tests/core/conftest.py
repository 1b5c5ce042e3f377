"""A toy architecture and the method library, registered for core tests."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc

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


class ToyPlugin:
    @mc.hookimpl
    def mecha_architectures(self):
        return [TOY]


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
    import mecha_methods
    mecha_plugins.register(mecha_methods, "methods")
    mecha_plugins.register(ToyPlugin(), "toy")
    return mecha_plugins
