"""Random checkpoints with real key names, for tests, ``mecha demo`` and benchmarks.

Each key's tensor depends only on the seed and the key's name, so a model can be produced key by key
in any order: :func:`write_random_model` streams a real-size file to disk holding one tensor in
memory at a time, and its content equals ``generate(...)`` of the same seed. Architecture plugins
build their ``generate`` with :func:`generator`; nothing here knows a model.

    import torch
    from mecha_core.random_models import write_random_model
    from mecha_sd1 import sd1
    write_random_model("sd1-a.safetensors", sd1.keys(), seed=1, dtype=torch.float16, pruned=("ema", "scheduler"))
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from .architecture import KeySpec
from .output_file import OutputFile

KeysFor = Callable[[bool], Iterable[KeySpec]]  # tiny -> every key spec of the architecture


def random_tensor(spec: KeySpec, seed: int = 0, dtype: Any = None) -> Any:
    """The tensor of one key: normal values scaled by 1/sqrt(fan-in) in `dtype` (float32 by default);
    integer buffers such as ``position_ids`` hold 0, 1, 2... along their last axis, as real ones do."""
    import torch
    stored = getattr(torch, spec.dtype)
    if not stored.is_floating_point:
        if not spec.shape:
            return torch.zeros((), dtype=stored)
        return torch.arange(spec.shape[-1], dtype=stored).expand(spec.shape).contiguous()
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{spec.name}".encode()))
    scale = 1 / math.sqrt(math.prod(spec.shape[1:])) if len(spec.shape) >= 2 else 0.1
    values = torch.randn(spec.shape, generator=generator).mul_(scale)
    return values.to(dtype or torch.float32)


def selected(specs: Iterable[KeySpec], optional: bool, pruned: Collection[str] = ()) -> list[KeySpec]:
    """The keys a generated file holds: every key with `optional`; else those of a pruned file, which
    lacks the optional keys of the `pruned` components (an SD checkpoint's ``ema`` and ``scheduler``)
    and keeps the other optional ones (``position_ids``), as real pruned files do."""
    return [spec for spec in specs if optional or not (spec.optional and spec.component in pruned)]


def generator(keys_for: KeysFor, pruned: Collection[str] = ()) -> Callable[..., dict[str, Any]]:
    """The ``generate`` function of an architecture whose keys (real or tiny) come from `keys_for`;
    `pruned` names the components whose optional keys a pruned file lacks (see :func:`selected`)."""

    def generate(seed: int = 0, dtype: Any = None, tiny: bool = True, optional: bool = False) -> dict[str, Any]:
        """A random state dict: `tiny` shrinks every dimension (same keys, coherent shapes); `optional`
        adds what pruned files lack (EMA weights, scheduler buffers, prediction-type flags)."""
        return {spec.name: random_tensor(spec, seed, dtype) for spec in selected(keys_for(tiny), optional, pruned)}

    return generate


def write_random_model(path: str | os.PathLike[str], specs: Iterable[KeySpec], *, seed: int = 0, dtype: Any = None,
                       optional: bool = False, pruned: Collection[str] = (),
                       metadata: Mapping[str, str] | None = None) -> Path:
    """Write a random model to a safetensors file one key at a time (constant memory), atomically;
    `optional` and `pruned` choose the keys as :func:`selected` does."""
    import torch
    chosen = selected(specs, optional, pruned)
    float_name = str(dtype or torch.float32).removeprefix("torch.")
    entries = [(s.name, float_name if getattr(torch, s.dtype).is_floating_point else s.dtype, s.shape) for s in chosen]
    with OutputFile(path, entries, metadata or {}) as out:
        for spec in chosen:
            out.write(spec.name, random_tensor(spec, seed, dtype))
        return out.commit()
