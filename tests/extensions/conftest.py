"""Plugins installed for one test: modules in a temporary folder on sys.path, with their metadata."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Iterator

import pytest

from .distributions import write_distribution

Install = Callable[..., importlib.metadata.EntryPoint]


@pytest.fixture
def install(tmp_path, monkeypatch) -> Iterator[Install]:
    """``install("name", source)``: a plugin distribution, gone after the test.

    The module is ``mecha_test_<name>``, the plugin (entry point) `plugin` or ``<name>``, the
    distribution `dist` or ``mecha-<name>``, version `version` or 1.0.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    modules: list[str] = []

    def write(name: str, source: str, *, dist: str | None = None, version: str = "1.0",
              plugin: str | None = None) -> importlib.metadata.EntryPoint:
        module = f"mecha_test_{name}"
        modules.append(module)
        return write_distribution(tmp_path, dist or f"mecha-{name}", version, module, source, plugin or name)

    yield write
    for module in modules:
        sys.modules.pop(module, None)
