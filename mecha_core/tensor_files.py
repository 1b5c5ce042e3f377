"""Reading tensors from safetensors files and in-memory dicts, one tensor (or part of one) at a time.

A safetensors file is an 8-byte header length, a JSON header and a data section. The header comes from
the internet, so every field is checked before it is used: nothing is allocated from a size the file
claims, offsets must lie inside the data and not overlap, and each span must hold exactly shape x dtype
bytes.

Tensors are read with ``preadv`` straight into the tensor's memory, not served from a memory map: a
file truncated while it is mapped kills the process with SIGBUS (no message, no clean-up), where a
short read is an error naming the file. The file is also checked against what it was when opened
(device, inode, size, modification time) each time it is reopened and, through
:meth:`SafetensorsFile.check_unchanged`, once everything has been read: a model rewritten in place
during a merge is refused rather than merged half old, half new.

Descriptors are opened lazily and pooled: a merge of hundreds of models holds at most a quarter of
the process's open-file limit, one descriptor per model at most, closing the least recently used
idle one to open another.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import math
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from . import dtypes, input_guard
from .direct_writes import tensor_bytes
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
    """A validated safetensors file, read with ``preadv`` through a pooled descriptor."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.label = str(path)
        self._fd: int | None = None
        self._users = 0  # reads in progress on self._fd (the pool closes only idle descriptors)
        self._status: tuple[int, int, int, int] | None = None  # (dev, ino, size, mtime_ns) when first opened
        self._closed = False
        fd = _POOL.acquire(self)
        try:
            self.file_size = self._status[2]  # type: ignore[index]
            self.header_size, self.tensors, self.metadata = _read_header(fd, self.file_size, self.label)
        except OSError as error:
            _POOL.release(self)
            self.close()
            raise ModelFileError(f"{self.label}: cannot read: {error.strerror or error}") from None
        except BaseException:
            _POOL.release(self)
            self.close()
            raise
        _POOL.release(self)
        self.data_start = 8 + self.header_size

    def _open(self) -> int:
        """Open the file (again), checking it is still the file first opened; called by the pool."""
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise ModelFileError(f"{self.label}: no such file" if self._status is None else
                                 f"{self.label}: the file was removed or renamed while mecha was reading it") from None
        except IsADirectoryError:
            raise ModelFileError(f"{self.label}: is a folder, not a model file") from None
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                raise
            raise ModelFileError(f"{self.label}: cannot open: {error.strerror or error}") from None
        except ValueError as error:
            raise ModelFileError(f"{self.label}: cannot open: {error}") from None
        try:
            status = os.fstat(fd)
            if stat.S_ISDIR(status.st_mode):
                raise ModelFileError(f"{self.label}: is a folder, not a model file")
            if not stat.S_ISREG(status.st_mode):
                raise ModelFileError(f"{self.label}: is not a regular file (a device, pipe or socket?)")
            if self._status is None:
                self._status = _signature(status)
                input_guard.reading(input_guard.file_id(status), self.label)
            elif _signature(status) != self._status:
                raise self._changed()
        except OSError as error:
            os.close(fd)
            raise ModelFileError(f"{self.label}: cannot read: {error.strerror or error}") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _changed(self) -> ModelFileError:
        return ModelFileError(f"{self.label}: the file changed while mecha was reading it (it was rewritten, "
                              f"replaced or truncated); nothing was written: merge again once it is complete")

    def check_unchanged(self) -> None:
        """Raise when the file, or what its path leads to, is no longer what it was when opened
        (device, inode, size and modification time)."""
        if self._status is None:
            return
        fd = _POOL.acquire(self)  # reopening checks the file; an open descriptor is checked here
        try:
            if _signature(os.fstat(fd)) != self._status:
                raise self._changed()
        finally:
            _POOL.release(self)
        try:  # and the path still leads to it (not replaced by a rename)
            replaced = _signature(os.stat(self.path)) != self._status
        except OSError:
            replaced = True
        if replaced:
            raise self._changed()

    def read(self, name: str) -> Any:
        """The whole tensor, in its stored dtype and shape."""
        info = self.tensors[name]
        return self.read_flat(name, 0, info.numel).reshape(info.shape)

    def read_flat(self, name: str, start: int, stop: int) -> Any:
        """Elements [start, stop) of the flattened tensor, as a new 1-D tensor."""
        import torch
        info = self.tensors[name]
        dtype = dtypes.to_torch(info.torch_dtype_name)
        count = stop - start
        out = torch.empty(max(count, 0), dtype=dtype)
        if count <= 0:
            return out
        offset = self.data_start + info.start + start * dtypes.itemsize(info.dtype)
        self._read_into(tensor_bytes(out.view(torch.uint8)), offset)
        return out

    def _read_into(self, view: memoryview, offset: int) -> None:
        fd = _POOL.acquire(self)
        try:
            done = 0
            while done < len(view):
                count = _preadv(fd, view[done:], offset + done)
                if count <= 0:  # the file ended early: it was truncated after it was opened
                    raise self._changed()
                done += count
        except OSError as error:
            raise ModelFileError(f"{self.label}: cannot read: {error.strerror or error}") from None
        finally:
            _POOL.release(self)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _POOL.forget(self)
            if self._status is not None:
                input_guard.done_reading(self._status[:2])

    def __del__(self) -> None:  # a file dropped without close() stops counting as an input
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.label!r}, {len(self.tensors)} tensors)"


def _signature(status: os.stat_result) -> tuple[int, int, int, int]:
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


class _DescriptorPool:
    """The open descriptors of model files: at most a quarter of the open-file limit at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: collections.OrderedDict[SafetensorsFile, None] = collections.OrderedDict()

    @staticmethod
    def limit() -> int:
        soft = _open_file_limit()
        return 1024 if soft is None else max(4, soft // 4)

    def acquire(self, file: SafetensorsFile) -> int:
        """`file`'s descriptor, opened if needed, held until :meth:`release`."""
        with self._lock:
            if file._closed:
                raise ModelFileError(f"{file.label}: file was closed")
            if file._fd is None:
                while len(self._open) >= self.limit() and self._evict():
                    pass
                file._fd = self._open_evicting(file)
                self._open[file] = None
            self._open.move_to_end(file)
            file._users += 1
            return file._fd

    def _open_evicting(self, file: SafetensorsFile) -> int:
        while True:
            try:
                return file._open()
            except OSError as error:  # EMFILE/ENFILE: the only OSError _open lets through
                if self._evict():
                    continue
                now = f", now {_open_file_limit()}" if _open_file_limit() is not None else ""
                raise ModelFileError(f"{file.label}: cannot open: too many open files ({error.strerror}); raise "
                                     f"the limit of open files (`ulimit -n`{now})") from None

    def release(self, file: SafetensorsFile) -> None:
        with self._lock:
            file._users -= 1
            if file._closed and file._users <= 0 and file._fd is not None:  # closed while this read ran
                os.close(file._fd)
                file._fd = None

    def forget(self, file: SafetensorsFile) -> None:
        """Close `file`'s descriptor for good (reads in progress keep it until they end)."""
        with self._lock:
            self._open.pop(file, None)
            if file._fd is not None and file._users <= 0:
                os.close(file._fd)
                file._fd = None

    def _evict(self) -> bool:
        """Close the least recently used idle descriptor; False when every one is in use."""
        for file in self._open:
            if file._users <= 0:
                del self._open[file]
                assert file._fd is not None
                os.close(file._fd)
                file._fd = None
                return True
        return False


def _open_file_limit() -> int | None:
    """The soft limit of open files, None when unlimited or unknown (no ``resource`` module)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _preadv(fd: int, view: memoryview, offset: int) -> int:
    """Read into `view` at `offset`; where ``os.preadv`` is missing, through a copy."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # pragma: no cover - not Linux/BSD
    view[:len(data)] = data
    return len(data)


_POOL = _DescriptorPool()


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
