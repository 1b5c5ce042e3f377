"""DoRA: a module whose ``dora_scale`` (PEFT: ``lora_magnitude_vector``) holds the magnitude of its layer.

A DoRA does not add a delta. With ``W`` the weight it is applied to, ``D`` its module's delta (LoRA,
LoHa or LoKr) and ``m`` its magnitude, the layer becomes ``W' = m * (W + D) / ||W + D||``, the norm taken
along the dimension the trainer used: of each output row (``dora_scale`` of shape (out, 1, ...), PEFT
and LyCORIS's default) or of each input channel (shape (1, in, ...), LyCORIS's ``wd_on_out=False``),
plus float32's epsilon as LyCORIS does. At strength ``alpha`` the layer moves that far towards it,
``W + alpha * (W' - W)``, as ComfyUI applies a DoRA.

So a DoRA is a change that depends on the model it is added to: mecha applies it only where it is added
into a model's weights (``add_difference(model, dora, alpha)``), with that model's weight, and refuses
reading it as a delta of its own (mixing it with other deltas, saving it as a LoRA). The norms need
whole rows or columns: a key with a DoRA module is composed whole, a float32 copy of its delta and of
its new weight at a time, where a plain LoRA streams in chunks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from mecha_core import MechaError, TensorInfo

from .algorithms import ModuleMath


def checked(module: ModuleMath, shape: tuple[int, ...], tensors: Mapping[str, TensorInfo], label: str) -> ModuleMath:
    """The module with the orientation of its norms, read off its magnitude's shape (the layer's
    `shape`); an error naming it when the magnitude fits neither its rows nor its input channels."""
    if module.dora is None:
        return module
    found = tuple(tensors[module.dora].shape)
    channels = module.columns // math.prod(module.kernel or ())
    if math.prod(found) == module.rows and (len(found) == 1 or found[0] == module.rows):
        return dataclasses.replace(module, dora_on_out=True)
    if len(shape) >= 2 and math.prod(found) == channels and len(found) >= 2 and found[0] == 1:
        return dataclasses.replace(module, dora_on_out=False)
    raise MechaError(f"{label}: LoRA module {module.name!r}: its dora_scale has shape {list(found)}, expected "
                     f"({module.rows}, 1, ...) for norms of the output rows or (1, {channels}, ...) for norms of "
                     f"the input channels")


def add(plan: Any, delta: Any, into: Any, alpha: float, read: Callable[[str], Any]) -> None:
    """Add ``alpha`` times the change a key's modules make into `into`, the key's weights, flat: the
    DoRA rule for DoRA modules, their delta for the others. `delta`: the key's deltas as (rows, columns)."""
    import torch
    rows = plan.shape[0]
    wide = torch.float64 if into.dtype == torch.float64 else torch.float32
    weight = into.view(rows, -1).to(wide)
    change = delta.to(wide)
    for module, first in plan.pieces:
        if module.dora is None:
            continue
        index = torch.arange(first, first + module.rows)
        if plan.swap:  # the key holds the module's rows rolled by half
            index = (index + rows // 2) % rows
        base = weight[index]
        changed = _apply(module, base + change[index], read(module.dora).to(wide))
        change[index] = changed - base
    into.add_(change.reshape(-1).to(into.dtype), alpha=alpha)


def _apply(module: ModuleMath, merged: Any, magnitude: Any) -> Any:
    """``m * V / (||V|| + eps)`` for one module's rows ``V`` (rows, columns)."""
    import torch
    eps = torch.finfo(torch.float32).eps
    if module.dora_on_out:
        norm = merged.norm(dim=1, keepdim=True) + eps
        return merged * (magnitude.reshape(-1, 1) / norm)
    channels = magnitude.numel()
    grouped = merged.reshape(merged.shape[0], channels, -1)
    norm = grouped.transpose(0, 1).reshape(channels, -1).norm(dim=1) + eps
    return (grouped * (magnitude.reshape(-1) / norm)[None, :, None]).reshape(merged.shape)
