"""The method library registered alone, and small helpers to run a method on tensors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mecha_core as mc


@pytest.fixture
def methods(mecha_plugins):
    """The plugin set with only mecha-methods registered (through the public plugin API)."""
    import mecha_methods
    mecha_plugins.register(mecha_methods, "methods")
    return mecha_plugins


def merge_tensors(recipe_of: Any, *tensors: torch.Tensor, **hypers: Any) -> torch.Tensor:
    """mecha.merge of `recipe_of(*models, **hypers)` on one-key dict models holding `tensors`, in fp64."""
    models = [{"w": t} for t in tensors]
    return mc.merge(recipe_of(*models, **hypers), save_dtype="fp32", work_dtype="fp64")["w"].double()


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def t(*values: Any) -> torch.Tensor:
    """A float64 tensor from literal values."""
    return torch.tensor(values if len(values) != 1 else values[0], dtype=torch.float64)


def close(actual: torch.Tensor, expected: Any, atol: float = 1e-9) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)
