"""Random kohya LoRAs with real module names, for tests and benchmarks.

A generated LoRA holds a module for every layer kohya's sd-scripts train in the architecture with conv
layers enabled (LoCon): for SD1/SDXL the text encoders' attention and MLP layers and the UNet's
attention, residual, down- and upsampling layers; for SD3 the three text encoders' and the MMDiT joint
blocks' layers. Each module's tensors depend only on the seed and the module's name, so
:func:`write_random_lora` streams a real-size LoRA to disk one module at a time, and equals
:func:`random_lora` of the same seed.

    from mecha_core import get_plugins
    from mecha_lora.generation import write_random_lora
    write_random_lora("sdxl-lora.safetensors", get_plugins().architectures.get("sdxl"), rank=32)
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mecha_core import Architecture, MechaError

from .naming import lora_names

Shape = tuple[int, ...]


def lora_layout(architecture: Architecture, rank: int, *, tiny: bool = False,
                conv: bool = True) -> list[tuple[str, Shape, Shape]]:
    """(module name, down shape, up shape) of every layer kohya trains; `tiny`: for the shapes of
    ``architecture.generate(tiny=True)``; ``conv=False``: without the k x k convolutions (a plain LoRA,
    as kohya trains without ``conv_dim``, rather than a LoCon)."""
    names = lora_names(architecture)
    if names is None:
        raise MechaError(f"architecture {architecture.name!r} has no layer a LoRA can target")
    shapes = _tiny_shapes(architecture) if tiny else {k: s.shape for k, s in architecture.key_specs.items()}
    layout = []
    for key in names.trained:
        shape = shapes[key]
        if not conv and len(shape) == 4 and shape[2:] != (1, 1):
            continue
        modules = names.kohya[key]
        rows = shape[0] // len(modules)
        up = (rows, rank, 1, 1) if len(shape) == 4 else (rows, rank)
        layout.extend((name, (rank, *shape[1:]), up) for name in modules)
    return layout


def _tiny_shapes(architecture: Architecture) -> dict[str, Shape]:
    import torch
    if architecture.generate is None:
        raise MechaError(f"architecture {architecture.name!r} has no generator, so no tiny shapes")
    model = architecture.generate(seed=0, dtype=torch.float16, tiny=True)
    return {architecture.canonical(name): tuple(tensor.shape) for name, tensor in model.items()}


def _module(name: str, down: Shape, up: Shape, seed: int, dtype: Any) -> Iterator[tuple[str, Any]]:
    """One module's tensors: down ~ N(0, 1/fan-in), up ~ N(0, 0.01/rank), alpha = rank / 2, so the delta's
    entries are about a tenth of a typical weight's."""
    import torch
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
    rank = down[0]
    yield f"{name}.lora_down.weight", torch.randn(down, generator=generator).div_(math.sqrt(math.prod(down[1:]))).to(dtype)
    yield f"{name}.lora_up.weight", torch.randn(up, generator=generator).mul_(0.1 / math.sqrt(rank)).to(dtype)
    yield f"{name}.alpha", torch.tensor(rank / 2, dtype=dtype)


def random_lora(architecture: Architecture, *, rank: int = 4, seed: int = 0, tiny: bool = True,
                dtype: Any = None) -> dict[str, Any]:
    """A random LoRA as a state dict (float32 unless `dtype`), for the tiny models by default."""
    import torch
    return {name: tensor for module in lora_layout(architecture, rank, tiny=tiny)
            for name, tensor in _module(*module, seed, dtype or torch.float32)}


def write_random_lora(path: str | os.PathLike[str], architecture: Architecture, rank: int = 32, seed: int = 0,
                      tiny: bool = False, *, dtype: Any = None, conv: bool = True) -> Path:
    """Write a random LoRA (float16 unless `dtype`) one module at a time, in constant memory, atomically;
    `conv` as for :func:`lora_layout`."""
    import torch
    from mecha_core import OutputFile
    dtype = dtype or torch.float16
    dtype_name = str(dtype).removeprefix("torch.")
    layout = lora_layout(architecture, rank, tiny=tiny, conv=conv)
    entries = [entry for name, down, up in layout for entry in
               ((f"{name}.lora_down.weight", dtype_name, down), (f"{name}.lora_up.weight", dtype_name, up),
                (f"{name}.alpha", dtype_name, ()))]
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2)}
    with OutputFile(path, entries, metadata) as out:
        for module in layout:
            for name, tensor in _module(*module, seed, dtype):
                out.write(name, tensor.contiguous())
        return out.commit()
