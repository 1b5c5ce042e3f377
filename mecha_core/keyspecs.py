"""Composing key specs from the modules of a network, so layouts are built, not pasted.

A structural builder returns the parameters of one module as :class:`mecha_core.KeySpec` objects whose
names are relative to the module and whose ``class_`` is the parameter's role (``to_q``). Wrapping a
module in a parent either extends both the name and the role (:func:`within`, ``attn1`` + ``to_q`` ->
``attn1_to_q``) or only the name (:func:`nest`, for containers such as ``transformer_blocks.0`` or a
block's own index, which say where a layer is, not what it is). This is how every class name follows
the rule "path below the block, without container indices, dots as underscores".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .architecture import KeySpec

Shape = tuple[int, ...]


def param(name: str, shape: Shape, role: str | None = None, dtype: str = "float32") -> KeySpec:
    """One tensor; its role defaults to its name without a ``.weight``/``.bias`` suffix."""
    if role is None:
        base = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
        role = base.replace(".", "_").lower()
    return KeySpec(name, tuple(shape), dtype, class_=role)


def _join(module: str, tensor: str) -> str:
    return f"{module}.{tensor}" if module else tensor


def linear(name: str, out_features: int, in_features: int, *, bias: bool = True,
           role: str | None = None) -> list[KeySpec]:
    """A linear layer: ``weight`` (out, in) and ``bias`` (out). An empty `name` is the module itself."""
    specs = [param(_join(name, "weight"), (out_features, in_features), role)]
    if bias:
        specs.append(param(_join(name, "bias"), (out_features,), role))
    return specs


def conv(name: str, out_channels: int, in_channels: int, kernel: int, *, role: str | None = None) -> list[KeySpec]:
    """A 2-D convolution with bias: ``weight`` (out, in, k, k)."""
    return [param(_join(name, "weight"), (out_channels, in_channels, kernel, kernel), role),
            param(_join(name, "bias"), (out_channels,), role)]


def norm(name: str, channels: int, *, bias: bool = True, role: str | None = None) -> list[KeySpec]:
    """A LayerNorm/GroupNorm (affine): ``weight`` and ``bias`` of one value per channel."""
    specs = [param(_join(name, "weight"), (channels,), role)]
    if bias:
        specs.append(param(_join(name, "bias"), (channels,), role))
    return specs


def within(prefix: str, specs: Iterable[KeySpec]) -> list[KeySpec]:
    """Put a module under a named attribute that is part of what its layers are (``attn1``, ``mlp``)."""
    role = prefix.replace(".", "_").lower()
    return [dataclasses.replace(s, name=f"{prefix}.{s.name}", class_=f"{role}_{s.class_}" if s.class_ else role)
            for s in specs]


def nest(prefix: str, specs: Iterable[KeySpec]) -> list[KeySpec]:
    """Put a module under a container path that says only where it is (``encoder.layers.3``)."""
    return [dataclasses.replace(s, name=f"{prefix}.{s.name}") for s in specs]


def tag(specs: Iterable[KeySpec], **fields: object) -> list[KeySpec]:
    """Set fields (component, blocks, merged, optional, ...) on every spec."""
    return [dataclasses.replace(s, **fields) for s in specs]  # type: ignore[arg-type]


def passthrough(specs: Iterable[KeySpec], component: str, *, optional: bool = False) -> list[KeySpec]:
    """Keys copied unchanged (a VAE, buffers): no blocks, no class, ``component`` names what they are."""
    return tag(specs, component=component, blocks=(), class_=None, merged=False, optional=optional)
