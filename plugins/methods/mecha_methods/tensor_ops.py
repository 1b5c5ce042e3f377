"""Small tensor routines shared by several merge method families.

Kept apart so that each family module holds only its methods; torch is imported inside the functions
so that importing the plugin (e.g. for ``mecha --help``) stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mecha_core import LazyInput

Tensor = Any  # torch.Tensor, without importing torch at module import


def computable(x: Tensor) -> Tensor:
    """`x` in a dtype that CPU linear algebra, FFT and selection kernels accept (fp16/bf16 -> fp32)."""
    import torch
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def rng(generator: Any, seed: int, device: Any) -> Any:
    """The generator the scheduler made for this key, or one seeded from `seed` for direct calls."""
    if generator is not None:
        return generator
    import torch
    made = torch.Generator(device=device if device is not None else "cpu")
    made.manual_seed(int(seed))
    return made


def uniform_like(x: Tensor, generator: Any) -> Tensor:
    """Uniform [0, 1) draws of `x`'s shape, in fp32 so that every work dtype draws the same numbers."""
    import torch
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)


def keep_top_fraction(x: Tensor, k: float) -> Tensor:
    """sd-mecha's TIES trim: zero the entries of `x` whose magnitude is below the top-`k` fraction.

    The threshold is the m-th smallest magnitude, m = max(int((1 - k) * numel), 1) (at most numel);
    entries at or above it are kept, so k=1 keeps everything and ties at the threshold are all kept.
    """
    import torch
    n = x.numel()
    if n == 0:
        return x.clone()
    magnitude = computable(x).abs()
    m = min(max(int((1 - k) * n), 1), n)
    threshold = magnitude.flatten().kthvalue(m).values
    return torch.where(magnitude >= threshold, x, torch.zeros((), dtype=x.dtype, device=x.device))


def row_cosines(x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Cosine similarity of matching rows (last dimension): <x, y> / max(|x| |y|, eps), keeping the dim."""
    import torch
    dot = (x * y).sum(dim=-1, keepdim=True)
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    return dot / norms.clamp_min(eps)


def per_model(value: Any, count: int) -> tuple[float, ...]:
    """A per-model hyperparameter as one value per model: merges pass a tuple, direct calls may pass one number."""
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return (value,) * count


CHUNK = 1 << 18  # elements a lazy method reads at a time: its float32 temporaries stay in the cache (1 MiB each)


def linear_combination(inputs: Sequence[LazyInput], coefficients: Sequence[float]) -> Tensor:
    """sum(c_i x_i) in the first input's dtype and shape, computed a chunk at a time (in float32 for
    fp16/bf16 inputs), so memory holds the result and one chunk's temporaries."""
    import torch

    count = inputs[0].numel()
    result = torch.empty(count, dtype=inputs[0].dtype, device=inputs[0].device)
    for start in range(0, count, CHUNK):
        stop = min(start + CHUNK, count)
        total = computable(inputs[0].flat(start, stop)).mul(coefficients[0])
        for lazy, coefficient in zip(inputs[1:], coefficients[1:]):
            total.add_(lazy.flat(start, stop), alpha=coefficient)
        result[start:stop] = total
    return result.reshape(inputs[0].shape)


def gram(inputs: Sequence[LazyInput], base: LazyInput | None = None) -> list[list[float]]:
    """The dot products <x_i, x_j> (i <= j) of the flattened inputs, or of their differences from
    `base` (task vectors), read a chunk at a time and summed in float64 from float32 products: the
    norms and angles of whole tensors (an LLM's 65 M-entry embedding) without a copy of any of them."""
    import torch

    count = len(inputs)
    products = [[0.0] * count for _ in range(count)]
    for start in range(0, inputs[0].numel(), CHUNK):
        stop = min(start + CHUNK, inputs[0].numel())
        vectors = [computable(x.flat(start, stop)) for x in inputs]
        if base is not None:
            origin = computable(base.flat(start, stop))
            vectors = [vector - origin for vector in vectors]
        for i in range(count):
            for j in range(i, count):
                products[i][j] += float(torch.sum(vectors[i] * vectors[j], dtype=torch.float64))
    return products
