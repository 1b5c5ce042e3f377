"""Shared set-up of the reliability catalogue: models written by the reference safetensors library,
raw (hostile) files written byte by byte, the CLI run in-process, and a folder snapshot that proves
nothing was added, left behind or changed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from mecha_core.cli import main
from mecha_core.plugins import Plugins

TEMP_GLOB = "*.mecha-tmp"


@pytest.fixture
def plugins(mecha_plugins: Plugins) -> Plugins:
    """The core's built-ins plus the method library; no architecture, so models are generic."""
    import mecha_methods
    mecha_plugins.register(mecha_methods, "methods")
    return mecha_plugins


CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
         torch.float8_e4m3fn: "F8_E4M3", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}


def save(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a model by the format's definition, independently of mecha's writer (and without numpy,
    which the reference library's writer needs): the tensors one after another, in the given order."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    data = bytearray()
    for name, tensor in tensors.items():
        raw = bytes(tensor.contiguous().reshape(-1).view(torch.uint8).tolist())
        header[name] = {"dtype": CODES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return write_raw(path, header, bytes(data))


def write_raw(path: Path, header: Mapping[str, Any] | bytes, data: bytes = b"", *,
              length: int | None = None) -> Path:
    """A safetensors file byte by byte: length field (true unless `length` is given), header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header, ensure_ascii=False).encode("utf-8")
    size = len(raw) if length is None else length
    path.write_bytes(size.to_bytes(8, "little") + raw + data)
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(TEMP_GLOB))


def run(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    """``mecha ARGS`` in this process: (exit status, stdout, stderr); argparse's exit is caught."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def error_line(err: str) -> str:
    """The single line of a failed command's standard error (asserting there is exactly one)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {lines!r}"
    return lines[0]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two small valid models with the same keys: a.safetensors and b.safetensors."""
    a = save({"w": torch.full((2, 2), 1.0), "b": torch.zeros(3)}, tmp_path / "a.safetensors")
    b = save({"w": torch.full((2, 2), 3.0), "b": torch.ones(3)}, tmp_path / "b.safetensors")
    return a, b


def recipe_file(folder: Path, text: str, name: str = "r.mecha") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def folder(plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder: models a (all 1) and b (all 3) and r.mecha, their weighted sum at 0.5.
    A test module that needs other files defines its own `folder`."""
    monkeypatch.chdir(tmp_path)
    save({"w": torch.full((4, 4), 1.0)}, tmp_path / "a.safetensors")
    save({"w": torch.full((4, 4), 3.0)}, tmp_path / "b.safetensors")
    recipe_file(tmp_path, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1 alpha=0.5\n')
    return tmp_path
