"""A pytest plugin for testing mecha plugins (opt-in: ``pytest_plugins = ["mecha_core.testing"]``).

Fixtures:

- ``mecha_plugins``: a fresh plugin set holding only the core's built-ins (no installed entry point
  is loaded), in use for the duration of the test; ``mecha_plugins.register(my_plugin)`` adds yours.
  The user's config file and ``MECHA_MODELS_DIR`` are hidden from the test.

Helpers:

- :func:`tiny_model`: a small random state dict of an architecture, with its real key names.
- :func:`write_model`: save a state dict as a safetensors file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from .architecture import Architecture
from .output_file import save_tensors
from .plugins import Plugins, get_plugins, load_plugins, using_plugins


@pytest.fixture
def mecha_plugins(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugins]:
    """A plugin set with only the core's built-ins, used by mecha while the test runs."""
    monkeypatch.setenv("MECHA_CONFIG", str(tmp_path_factory.mktemp("mecha-config") / "config.toml"))
    monkeypatch.delenv("MECHA_MODELS_DIR", raising=False)
    monkeypatch.delenv("MECHA_STRICT_PLUGINS", raising=False)
    plugins = load_plugins(entry_points=[], strict=True)
    with using_plugins(plugins):
        yield plugins


def tiny_model(arch: str | Architecture, *, seed: int = 0, dtype: Any = None) -> dict[str, Any]:
    """A random state dict of `arch` with every dimension shrunk (real key names)."""
    import torch
    architecture = arch if isinstance(arch, Architecture) else get_plugins().architectures.get(arch)
    if architecture.generate is None:
        raise ValueError(f"architecture {architecture.name!r} has no generator")
    return architecture.generate(seed=seed, dtype=dtype or torch.float32, tiny=True)


def write_model(tensors: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> Path:
    """Save a state dict as a safetensors file and return its path."""
    return save_tensors(tensors, path, metadata)
