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
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from . import dtypes
from .errors import ModelFileError

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIMENSIONS = 64  # no real model comes close; bounds the work a hostile shape can ask for
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
            # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise ModelFileError(f"{self.label}: no such file") from None
        except IsADirectoryError:
            raise ModelFileError(f"{self.label}: is a folder, not a model file") from None
        except (OSError, ValueError) as error:
            raise ModelFileError(f"{self.label}: cannot open: {getattr(error, 'strerror', None) or error}") from None
        try:
            status = os.fstat(fd)
            if stat.S_ISDIR(status.st_mode):
                raise ModelFileError(f"{self.label}: is a folder, not a model file")
            if not stat.S_ISREG(status.st_mode):
                raise ModelFileError(f"{self.label}: is not a regular file (a device, pipe or socket?)")
            self.file_size = status.st_size
            self.header_size, self.tensors, self.metadata = _read_header(fd, self.file_size, self.label)
        except OSError as error:
            os.close(fd)
            raise ModelFileError(f"{self.label}: cannot read: {error.strerror or error}") from None
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
            # the map is dropped, not closed: tensors read from it hold a reference to it and stay
            # valid; it is unmapped when the last of them is freed (closing it would unmap memory
            # those tensors still point to)
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


class _DuplicateName(Exception):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a name given twice (which of two entries is meant is ambiguous)."""
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise _DuplicateName(name)
        result[name] = value
    return result


def _read_header(fd: int, file_size: int, label: str) -> tuple[int, dict[str, TensorInfo], dict[str, str]]:
    def fail(problem: str) -> ModelFileError:
        return ModelFileError(f"{label}: not a valid safetensors file: {problem}")

    if file_size < 8:
        raise fail(f"the file is {file_size} bytes, too short to hold a header")
    prefix = _read_exact(fd, 0, 8)
    header_size = int.from_bytes(prefix, "little")
    # Sniff for a pickle only when the bytes make no sense as safetensors: a valid header length can
    # begin with the same bytes as a pickle (any length of the form 256k + 128 starts with 0x80).
    plausible = header_size <= min(MAX_HEADER_BYTES, file_size - 8) and _read_exact(fd, 8, 1) == b"{"
    if not plausible and _looks_pickled(prefix):
        raise ModelFileError(f"{label}: this is a pickle (PyTorch .ckpt/.pt) file, not safetensors; {CONVERT_HINT}")
    if header_size > MAX_HEADER_BYTES:
        raise fail(f"the header claims {header_size} bytes (more than {MAX_HEADER_BYTES} is not a real header)")
    if header_size > file_size - 8:
        raise fail(f"the header claims {header_size} bytes but the file holds only {file_size - 8} after "
                   f"the length field (truncated file?)")
    raw = _read_exact(fd, 8, header_size)
    if len(raw) != header_size:
        raise fail(f"the file ended while reading the {header_size}-byte header (truncated file?)")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_object)
    except _DuplicateName as duplicate:
        raise fail(f"the header lists {_show(duplicate.args[0])} twice") from None
    except UnicodeDecodeError:
        raise fail("the header is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise fail(f"the header is not JSON ({error})") from None
    except RecursionError:
        raise fail("the header nests JSON arrays or objects too deeply") from None
    except ValueError:  # json turns digits into an int and Python refuses one of over 4300 digits
        raise fail("the header holds a number too long to be real") from None
    if not isinstance(header, dict):
        raise fail(f"the header is a JSON {_json_kind(header)}, expected an object")
    data_size = file_size - 8 - header_size
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise fail("__metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_info(name, entry, data_size, fail)
    spans = sorted((info.start, info.end, name) for name, info in tensors.items() if info.end > info.start)
    for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise fail(f"tensors {_show(name_a)} and {_show(name_b)} overlap in the data section")
    return header_size, tensors, metadata


def _looks_pickled(prefix: bytes) -> bool:
    """A zip archive (``torch.save``'s format) or a pickle stream of protocol 2 to 5."""
    return prefix[:4] == b"PK\x03\x04" or (prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def _show(value: Any, limit: int = 80) -> str:
    """repr() of a header value, cut short: a hostile header must not make a message megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _span_bytes(shape: list[int], itemsize: int) -> int | None:
    """shape x itemsize in bytes, or None once the product passes 2**64 (no file is that large).

    A header can hold dozens of dimensions of thousands of digits each; the product stops early
    rather than building a number of tens of thousands of digits.
    """
    if 0 in shape:
        return 0
    size = itemsize
    for dim in shape:
        size *= dim
        if size > 1 << 64:
            return None
    return size


def _tensor_info(name: str, entry: Any, data_size: int, fail: Any) -> TensorInfo:
    where = f"tensor {_show(name)}"
    if not isinstance(entry, dict):
        raise fail(f"entry for {where} is a JSON {_json_kind(entry)}, expected an object")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in dtypes.SAFETENSORS_DTYPES:
        raise fail(f"{where} has unknown dtype {_show(dtype)}; expected one of {', '.join(dtypes.SAFETENSORS_DTYPES)}")
    shape = entry.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS
            or not all(_is_int(d) and d >= 0 for d in shape)):
        raise fail(f"{where} has an invalid shape {_show(shape)}; expected a list of at most {MAX_DIMENSIONS} "
                   f"non-negative integers")
    offsets = entry.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise fail(f"{where} has invalid data_offsets {_show(offsets)}; expected [start, end]")
    start, end = offsets
    if start > end:
        raise fail(f"{where} has data_offsets {_show(offsets)} that end before they start")
    if not 0 <= start <= end <= data_size:
        raise fail(f"{where} lies at bytes {_show(start, 24)}..{_show(end, 24)}, outside the {data_size}-byte "
                   f"data section")
    needed = _span_bytes(shape, dtypes.itemsize(dtype))
    if needed != end - start:
        size = f"{needed} bytes" if needed is not None else "more than 2**64 bytes"
        raise fail(f"{where} of shape {_show(shape)} and dtype {dtype} needs {size} but spans {end - start}")
    return TensorInfo(dtype, tuple(shape), start, end)


class DictTensors:
    """An in-memory state dict seen through the same interface as a file."""

    def __init__(self, tensors: Mapping[str, Any], label: str = "<in-memory model>") -> None:
        self.label = label
        self._tensors = dict(tensors)
        self.metadata: dict[str, str] = {}
        infos = {}
        for name, tensor in self._tensors.items():
            infos[name] = _dict_tensor_info(name, tensor, label)
        self.tensors = infos

    def read(self, name: str) -> Any:
        return self._tensors[name]

    def read_flat(self, name: str, start: int, stop: int) -> Any:
        return self._tensors[name].reshape(-1)[start:stop]

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)


def _dict_tensor_info(name: Any, tensor: Any, label: str) -> TensorInfo:
    """What a state dict entry is, refusing what a safetensors file could not hold."""
    import torch
    if not isinstance(name, str):
        raise ModelFileError(f"{label}: key {_show(name)} is a {type(name).__name__}; keys must be strings")
    if not isinstance(tensor, torch.Tensor):
        raise ModelFileError(f"{label}: key {_show(name)} holds a {type(tensor).__name__}, expected a tensor")
    dtype_name = dtypes.name_of(tensor.dtype)
    if dtype_name not in dtypes.TORCH_NAME_TO_CODE:
        raise ModelFileError(f"{label}: key {_show(name)} has dtype {dtype_name}, which safetensors cannot "
                             f"store; expected one of {', '.join(dtypes.TORCH_NAME_TO_CODE)}")
    return TensorInfo(dtypes.code_of(dtype_name), tuple(tensor.shape), 0, 0)


def open_tensor_file(path: str | os.PathLike[str]) -> SafetensorsFile:
    """Open a model file, refusing pickles before reading a byte of them."""
    suffix = Path(path).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelFileError(f"{path}: {suffix} files are pickles; {CONVERT_HINT}")
    return SafetensorsFile(path)
