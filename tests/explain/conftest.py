"""The method library and the SD architectures, registered; header-only model files."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from mecha_core import KeySpec, tensor_files

ITEM_SIZES = {"float32": 4, "float16": 2, "int64": 8, "int32": 4}
CODES = {"float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32"}


@pytest.fixture
def plugins(mecha_plugins):
    import mecha_methods
    import mecha_sd1
    import mecha_sdxl
    mecha_plugins.register(mecha_methods, "methods")
    mecha_plugins.register(mecha_sd1, "sd1")
    mecha_plugins.register(mecha_sdxl, "sdxl")
    return mecha_plugins


def write_header_only(path: Path, specs: Iterable[KeySpec], dtype: str | None = None, garbage: bool = True) -> Path:
    """A safetensors file with a valid header over `specs` and a data section of the right size that
    holds no tensor: 0xFF bytes (NaN in every float dtype) when `garbage`, else a sparse hole."""
    header = {}
    offset = 0
    for spec in specs:
        name = dtype or spec.dtype if spec.dtype.startswith("float") else spec.dtype
        size = ITEM_SIZES[name] * math.prod(spec.shape)
        header[spec.name] = {"dtype": CODES[name], "shape": list(spec.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        if garbage:
            handle.write(b"\xff" * offset)
    if not garbage:
        os.truncate(path, 8 + len(raw) + offset)
    return path


def tiny_headers(folder: Path, arch: str, names: str = "abc") -> list[Path]:
    """Header-only files of an architecture's tiny layout (shares need no tensor data), one per name."""
    import importlib
    module = importlib.import_module(f"mecha_{arch}.{arch}")
    specs = [spec for spec in module.keys(tiny=True) if not spec.optional]
    return [write_header_only(folder / f"{name}.safetensors", specs) for name in names]


@pytest.fixture
def no_tensor_reads(monkeypatch):
    """Any read of a model file's data section fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("explain read tensor data")
    for name in ("read", "read_flat", "_read_into", "_map"):  # the public reads, and what serves them
        if hasattr(tensor_files.SafetensorsFile, name):
            monkeypatch.setattr(tensor_files.SafetensorsFile, name, refuse)
