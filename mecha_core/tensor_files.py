"""Reading tensors from safetensors files and in-memory dicts, one tensor (or part of one) at a time.

A safetensors file is an 8-byte header length, a JSON header and a data section. The header comes from
the internet, so every field is checked before it is used: nothing is allocated from a size the file
claims, offsets must lie inside the data and not overlap, and each span must hold exactly shape x dtype
bytes. Tensors are then served as zero-copy views of a private read-only memory map, so reading a key
costs page-cache reads, not private memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from . import dtypes
from .errors import ModelFileError

MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
CONVERT_HINT = ("mecha never unpickles model files (a pickle can run code); convert it to .safetensors "
                "first, e.g. with `mecha convert FILE` or safetensors.torch.save_file(torch.load(FILE, "
                "weights_only=True), 'out.safetensors')")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a file, and what it is."""

    dtype: str  # safetensors code, e.g. "F16"
    shape: tuple[int, ...]
    start: int = 0  # byte offsets inside the data section
    end: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.itemsize(self.dtype)

    @property
    def torch_dtype_name(self) -> str:
        return dtypes.torch_name(self.dtype)


class TensorFile(Protocol):
    """What the rest of mecha needs of a model's storage: a header and tensor reads."""

    label: str
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]

    def read(self, name: str) -> Any: ...

    def read_flat(self, name: str, start: int, stop: int) -> Any: ...

    def close(self) -> None: ...


class SafetensorsFile:
    """A validated safetensors file, read through a private memory map."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.label = str(path)
        self._lock = threading.Lock()
        self._mmap: mmap.mmap | None = None
        self._fd: int | None = None
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise ModelFileError(f"{self.label}: no such file") from None
        except IsADirectoryError:
            raise ModelFileError(f"{self.label}: is a folder, not a model file") from None
        except OSError as error:
            raise ModelFileError(f"{self.label}: cannot open: {error.strerror}") from None
        try:
            self.file_size = os.fstat(fd).st_size
            self.header_size, self.tensors, self.metadata = _read_header(fd, self.file_size, self.label)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.data_start = 8 + self.header_size

    def _map(self) -> mmap.mmap:
        with self._lock:
            if self._mmap is None:
                if self._fd is None:
                    raise ModelFileError(f"{self.label}: file was closed")
                # ACCESS_COPY gives a writable (never written) private view, which torch can wrap
                # without copying; pages stay file-backed until written, and we never write.
                self._mmap = mmap.mmap(self._fd, 0, access=mmap.ACCESS_COPY)
            return self._mmap

    def read(self, name: str) -> Any:
        """The whole tensor, as a zero-copy view in its stored dtype and shape."""
        info = self.tensors[name]
        return self.read_flat(name, 0, info.numel).reshape(info.shape)

    def read_flat(self, name: str, start: int, stop: int) -> Any:
        """Elements [start, stop) of the flattened tensor, as a zero-copy 1-D view."""
        import torch
        info = self.tensors[name]
        dtype = dtypes.to_torch(info.torch_dtype_name)
        count = stop - start
        if count <= 0:
            return torch.empty(0, dtype=dtype)
        offset = self.data_start + info.start + start * dtypes.itemsize(info.dtype)
        return torch.frombuffer(self._map(), dtype=dtype, count=count, offset=offset)

    def close(self) -> None:
        with self._lock:
            if self._mmap is not None:
                try:
                    self._mmap.close()
                except BufferError:
                    pass  # a tensor still views the map; the OS unmaps it when that tensor is freed
                self._mmap = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.label!r}, {len(self.tensors)} tensors)"


def _read_exact(fd: int, offset: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 24), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_header(fd: int, file_size: int, label: str) -> tuple[int, dict[str, TensorInfo], dict[str, str]]:
    def fail(problem: str) -> ModelFileError:
        return ModelFileError(f"{label}: not a valid safetensors file: {problem}")

    if file_size < 8:
        raise fail(f"the file is {file_size} bytes, too short to hold a header")
    prefix = _read_exact(fd, 0, 8)
    if prefix[:2] == b"PK" or prefix[:1] == b"\x80":
        raise ModelFileError(f"{label}: this is a pickle (PyTorch .ckpt/.pt) file, not safetensors; {CONVERT_HINT}")
    header_size = int.from_bytes(prefix, "little")
    if header_size > MAX_HEADER_BYTES:
        raise fail(f"the header claims {header_size} bytes (more than {MAX_HEADER_BYTES} is not a real header)")
    if header_size > file_size - 8:
        raise fail(f"the header claims {header_size} bytes but the file holds only {file_size - 8} after "
                   f"the length field (truncated file?)")
    raw = _read_exact(fd, 8, header_size)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise fail(f"the header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise fail(f"the header is a JSON {type(header).__name__}, expected an object")
    data_size = file_size - 8 - header_size
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise fail("__metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_info(name, entry, data_size, fail)
    spans = sorted((info.start, info.end, name) for name, info in tensors.items() if info.end > info.start)
    for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise fail(f"tensors {name_a!r} and {name_b!r} overlap in the data section")
    return header_size, tensors, metadata


def _tensor_info(name: str, entry: Any, data_size: int, fail: Any) -> TensorInfo:
    if not isinstance(entry, dict):
        raise fail(f"entry for tensor {name!r} is not an object")
    dtype = entry.get("dtype")
    if dtype not in dtypes.SAFETENSORS_DTYPES:
        raise fail(f"tensor {name!r} has unknown dtype {dtype!r}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise fail(f"tensor {name!r} has an invalid shape {shape!r}")
    offsets = entry.get("data_offsets")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise fail(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    start, end = offsets
    if not 0 <= start <= end <= data_size:
        raise fail(f"tensor {name!r} lies at bytes {start}..{end}, outside the {data_size}-byte data section")
    info = TensorInfo(dtype, tuple(shape), start, end)
    if info.nbytes != end - start:
        raise fail(f"tensor {name!r} of shape {list(shape)} and dtype {dtype} needs {info.nbytes} bytes "
                   f"but spans {end - start}")
    return info


class DictTensors:
    """An in-memory state dict seen through the same interface as a file."""

    def __init__(self, tensors: Mapping[str, Any], label: str = "<in-memory model>") -> None:
        self.label = label
        self._tensors = dict(tensors)
        self.metadata: dict[str, str] = {}
        infos = {}
        for name, tensor in self._tensors.items():
            code = dtypes.code_of(dtypes.name_of(tensor.dtype))
            infos[name] = TensorInfo(code, tuple(tensor.shape), 0, 0)
        self.tensors = infos

    def read(self, name: str) -> Any:
        return self._tensors[name]

    def read_flat(self, name: str, start: int, stop: int) -> Any:
        return self._tensors[name].reshape(-1)[start:stop]

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)


def open_tensor_file(path: str | os.PathLike[str]) -> SafetensorsFile:
    """Open a model file, refusing pickles before reading a byte of them."""
    suffix = Path(path).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelFileError(f"{path}: {suffix} files are pickles; {CONVERT_HINT}")
    return SafetensorsFile(path)
