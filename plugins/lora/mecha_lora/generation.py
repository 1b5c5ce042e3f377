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


def _lycoris_shapes(algo: str, down: Shape, up: Shape) -> list[tuple[str, Shape, float]]:
    """(part, shape, standard deviation) of the LoHa or LoKr module of the layer a LoRA module of shapes
    `down`/`up` targets: LoHa two rank-r products; LoKr LyCORIS's default layout (``factor`` -1, ``w1``
    whole, ``w2`` whole or of rank r as LyCORIS decides). The delta's entries are small next to a weight's."""
    from .encoder import factorization
    rank, rows, fan_in = down[0], up[0], math.prod(down[1:])
    if algo == "loha":
        return [(f"hada_{side}_{part}", shape, std) for side in ("w1", "w2")
                for part, shape, std in (("a", (rows, rank), 0.3 / math.sqrt(rank)), ("b", (rank, fan_in), fan_in ** -0.5))]
    kernel = tuple(down[2:])
    (a, b), (c, d) = factorization(rows, -1), factorization(down[1], -1)
    spread = (fan_in / c) ** -0.5
    if rank >= max(b, d) / 2:
        return [("lokr_w1", (a, c), 0.1), ("lokr_w2", (b, d, *kernel), 0.3 * spread)]
    return [("lokr_w1", (a, c), 0.1), ("lokr_w2_a", (b, rank), 0.3 / math.sqrt(rank)),
            ("lokr_w2_b", (rank, d * math.prod(kernel)), spread)]


def _lycoris_module(algo: str, name: str, down: Shape, up: Shape, seed: int, dtype: Any) -> Iterator[tuple[str, Any]]:
    """One LoHa or LoKr module's tensors (:func:`_lycoris_shapes`), alpha = rank: scale 1."""
    import torch
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{algo}:{name}".encode()))
    for part, shape, std in _lycoris_shapes(algo, down, up):
        yield f"{name}.{part}", torch.randn(shape, generator=generator).mul_(std).to(dtype)
    yield f"{name}.alpha", torch.tensor(float(down[0]), dtype=dtype)


def write_random_lora(path: str | os.PathLike[str], architecture: Architecture, rank: int = 32, seed: int = 0,
                      tiny: bool = False, *, dtype: Any = None, conv: bool = True, algo: str = "lora") -> Path:
    """Write a random LoRA (float16 unless `dtype`) one module at a time, in constant memory, atomically;
    `conv` as for :func:`lora_layout`; `algo` ``"loha"`` or ``"lokr"`` writes LyCORIS modules instead."""
    import torch
    from mecha_core import OutputFile
    dtype = dtype or torch.float16
    dtype_name = str(dtype).removeprefix("torch.")
    layout = lora_layout(architecture, rank, tiny=tiny, conv=conv)
    if algo == "lora":
        def module(entry: tuple[str, Shape, Shape]) -> Iterator[tuple[str, Any]]:
            return _module(*entry, seed, dtype)
        parts = [[("lora_down.weight", down), ("lora_up.weight", up), ("alpha", ())] for _, down, up in layout]
    elif algo in ("loha", "lokr"):
        def module(entry: tuple[str, Shape, Shape]) -> Iterator[tuple[str, Any]]:
            return _lycoris_module(algo, *entry, seed, dtype)
        parts = [[(part, shape) for part, shape, _ in _lycoris_shapes(algo, down, up)] + [("alpha", ())]
                 for _, down, up in layout]
    else:
        raise MechaError(f"random LoRA algorithm {algo!r}: expected lora, loha or lokr")
    entries = [(f"{name}.{part}", dtype_name, shape) for (name, _, _), shapes in zip(layout, parts)
               for part, shape in shapes]
    metadata = {"ss_network_module": "networks.lora" if algo == "lora" else "lycoris.kohya",
                "ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2 if algo == "lora" else rank)}
    with OutputFile(path, entries, metadata) as out:
        for entry in layout:
            for name, tensor in module(entry):
                out.write(name, tensor.contiguous())
        return out.commit()
