"""Shared test set-up: core tests never see installed plugins or the developer's config by accident."""

from __future__ import annotations

from pathlib import Path

import pytest

from mecha_core.plugins import set_plugins

pytest_plugins = ["mecha_core.testing"]

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    monkeypatch.setenv("MECHA_LOAD_PLUGINS", "")
    monkeypatch.setenv("MECHA_CONFIG", str(tmp_path_factory.mktemp("config") / "config.toml"))
    monkeypatch.delenv("MECHA_MODELS_DIR", raising=False)
    monkeypatch.delenv("MECHA_STRICT_PLUGINS", raising=False)
    previous = set_plugins(None)
    yield
    set_plugins(previous)


@pytest.fixture
def reference() -> Path:
    """The real SD1/SDXL/SD3 layout tables of ../shared/reference (read, never copied); skip without them."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference layouts not found at {REFERENCE}")
    return REFERENCE
