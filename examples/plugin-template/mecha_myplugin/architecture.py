"""toy_mlp: a 4-layer MLP, the smallest architecture with components, blocks and classes.

Keys (full size; ``generate(tiny=True)`` shrinks every dimension, keeping the names):

    normalizer.mean, normalizer.std        input statistics: passed through, never merged
    layers.{0..3}.linear.weight / .bias    component body, block layer{i}, class linear
    layers.{0..3}.norm.weight / .bias      component body, block layer{i}, class norm
    head.weight / .bias                    component head, block out, class linear
                                           (older files call them classifier.*: an alias)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mecha_core import Architecture, Component, KeySpec

LAYERS = 4
FULL = {"inputs": 64, "hidden": 256, "outputs": 10}
TINY = {"inputs": 8, "hidden": 16, "outputs": 4}


def _keys(dims: dict[str, int]) -> Iterator[KeySpec]:
    inputs, hidden, outputs = dims["inputs"], dims["hidden"], dims["outputs"]
    for name in ("normalizer.mean", "normalizer.std"):
        yield KeySpec(name, (inputs,), component="normalizer", merged=False)
    for layer in range(LAYERS):
        prefix, block = f"layers.{layer}", (f"layer{layer}",)
        fan_in = inputs if layer == 0 else hidden
        yield KeySpec(f"{prefix}.linear.weight", (hidden, fan_in), component="body", blocks=block, class_="linear")
        yield KeySpec(f"{prefix}.linear.bias", (hidden,), component="body", blocks=block, class_="linear")
        yield KeySpec(f"{prefix}.norm.weight", (hidden,), component="body", blocks=block, class_="norm")
        yield KeySpec(f"{prefix}.norm.bias", (hidden,), component="body", blocks=block, class_="norm")
    for part, shape in (("weight", (outputs, hidden)), ("bias", (outputs,))):
        yield KeySpec(f"head.{part}", shape, component="head", blocks=("out",), class_="linear",
                      aliases=(f"classifier.{part}",))


def generate(seed: int = 0, dtype: Any = None, tiny: bool = True) -> dict[str, Any]:
    """A random toy_mlp state dict: real key names, dimensions shrunk when `tiny` (the default).

    The same seed gives the same tensors; `dtype` (default float32) applies to every key.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for spec in _keys(TINY if tiny else FULL):
        values = torch.randn(spec.shape, generator=generator)
        if spec.name.endswith(".weight") and len(spec.shape) == 2:
            values /= spec.shape[1] ** 0.5  # keep activations at unit scale, like a real initialization
        elif spec.name in ("normalizer.std",) or spec.name.endswith("norm.weight"):
            values = values.abs().add_(0.5)  # scales are positive
        tensors[spec.name] = values.to(dtype or torch.float32)
    return tensors


TOY_MLP = Architecture(
    name="toy_mlp",
    components=(
        Component("body", tuple(f"layer{layer}" for layer in range(LAYERS)), summary="the hidden layers"),
        Component("head", ("out",), summary="the output layer"),
    ),
    keys=lambda: _keys(FULL),
    summary="a 4-layer MLP (the mecha-myplugin example architecture)",
    generate=generate,
)
