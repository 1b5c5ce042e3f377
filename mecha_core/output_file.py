"""Writing a safetensors file as results arrive, atomically.

The layout (every tensor's name, dtype and shape) is known before the first result, so the header is
written first and each result goes straight to its offset with ``pwrite`` (its whole blocks past the
page cache, see :mod:`mecha_core.direct_writes`), in whatever order the workers finish. Everything
is written to a temporary file in the target folder; only a complete, flushed file is renamed over
the target. On any failure, or Ctrl-C, the temporary file is removed
and whatever was at the target stays untouched. No output is written over one of its inputs (see
:mod:`mecha_core.input_guard`).

A temporary file's name carries its writer (a hash of the host name and the process id), so that
the next write into the same folder can remove what a killed writer left (:func:`remove_stale_temporaries`)
without touching the file of a writer still running, here or on another host sharing the folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import dtypes
from .direct_writes import DirectWrites, pwrite_all
from .errors import MechaError
from .input_guard import FileId, file_id, identities, refuse_writing_over_inputs

TEMP_SUFFIX = ".mecha-tmp"
READABLE_HEADER_BYTES = 100_000_000  # the safetensors library refuses a longer header (mecha reads up to 100 MiB)
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TEMP_NAME = re.compile(r"\.[^/]*\.([0-9a-f]{8})-([0-9]+)-[0-9a-f]{8}" + re.escape(TEMP_SUFFIX))
_committed: list[Path] = []  # every output renamed into place by this process, in order


def plan_layout(entries: Iterable[tuple[str, str, tuple[int, ...]]]) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """(name, torch dtype name, shape, start, end) per tensor, widest dtypes first so each is aligned."""
    ordered = sorted(entries, key=lambda e: (-dtypes.itemsize(dtypes.code_of(e[1])), e[0]))
    layout = []
    offset = 0
    for name, dtype_name, shape in ordered:
        size = dtypes.itemsize(dtypes.code_of(dtype_name))
        for dim in shape:
            size *= dim
        layout.append((name, dtype_name, tuple(shape), offset, offset + size))
        offset += size
    return layout


def encode_header(layout: list[tuple[str, str, tuple[int, ...], int, int]], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name, dtype_name, shape, start, end in layout:
        header[name] = {"dtype": dtypes.code_of(dtype_name), "shape": list(shape), "data_offsets": [start, end]}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    return len(raw).to_bytes(8, "little") + raw


class OutputFile:
    """A safetensors file being written; use as a context manager, then :meth:`commit`."""

    def __init__(self, path: str | os.PathLike[str], entries: Iterable[tuple[str, str, tuple[int, ...]]],
                 metadata: Mapping[str, str], *, inputs: Iterable[str | os.PathLike[str]] = (),
                 part: bool = False, direct: bool = True) -> None:
        _check_name(Path(path))
        self.path = _target(Path(path))
        self.part = part  # a piece of a larger output (a shard): written only when the whole is
        self.direct = direct  # whole blocks past the page cache where the system allows it
        self.layout = plan_layout(entries)
        self.offsets = {name: (start, dtype_name) for name, dtype_name, _, start, _ in self.layout}
        self.header = encode_header(self.layout, metadata)
        self.total_size = len(self.header) + (self.layout[-1][4] if self.layout else 0)
        if len(self.header) - 8 > READABLE_HEADER_BYTES:
            raise MechaError(f"{str(self.path)!r}: the header would be {len(self.header) - 8} bytes, more than the "
                             f"{READABLE_HEADER_BYTES} that safetensors readers accept; store less metadata")
        self._inputs = identities(inputs)
        _check_target(self.path, self._inputs)
        self._fd: int | None = None
        self._temp: Path | None = None
        self._temp_id: FileId | None = None
        self._direct: DirectWrites | None = None
        self._write_lock = threading.Lock()

    def __enter__(self) -> OutputFile:
        self._fd, self._temp = _make_temp(self.path)
        try:
            self._temp_id = file_id(os.fstat(self._fd))
            self._reserve()
            self._pwrite(memoryview(self.header), 0)
            self._direct = DirectWrites(self._temp, self._write_buffered, direct=self.direct)
        except BaseException:
            self.abort()
            raise
        return self

    def _reserve(self) -> None:
        """Claim the space up front so that a full disk fails now, not after minutes of merging."""
        assert self._fd is not None
        try:
            os.posix_fallocate(self._fd, 0, self.total_size)
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise MechaError(f"not enough disk space in {str(self.path.parent)!r} for the "
                                 f"{self.total_size / 1e9:.2f} GB output") from None
            self._truncate()  # file system without fallocate: a sparse file
        except AttributeError:
            self._truncate()

    def _truncate(self) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self.total_size)
        except OSError as error:
            raise MechaError(f"cannot create the {self.total_size / 1e9:.2f} GB output {str(self.path)!r}: "
                             f"{error.strerror}") from None

    def write(self, name: str, tensor: Any, start_element: int = 0) -> None:
        """Write a contiguous CPU tensor (or the part of one starting at `start_element`)."""
        if self._direct is None:
            raise MechaError(f"{self.path}: the output was closed")
        start, _ = self.offsets[name]
        offset = len(self.header) + start + start_element * tensor.element_size()
        try:
            self._direct.write(tensor, offset)
        except OSError as error:
            raise self._write_error(error) from None

    @property
    def temporary_path(self) -> Path:
        """The temporary file being written (entered; renamed over :attr:`path` by :meth:`commit`): an
        executor's workers write their ranges of it in place."""
        if self._temp is None:
            raise MechaError(f"{self.path}: the output is not being written")
        return Path(os.path.abspath(self._temp))

    def write_bytes(self, data: bytes, offset: int) -> None:
        """Write raw bytes at file `offset`: an executor's, for the tensor bytes sharing the header's
        pages, which its workers leave to this process (:mod:`mecha_core.file_ranges`)."""
        self._write_buffered(memoryview(data), offset)

    def _write_buffered(self, data: memoryview, offset: int) -> None:
        # one buffered write at a time: the kernel serialises them on the file anyway (the inode
        # lock), and a worker waiting there spins on its core; waiting here, it sleeps and the
        # core goes to the workers computing
        with self._write_lock:
            self._pwrite(data, offset)

    def _pwrite(self, data: memoryview, offset: int) -> None:
        if self._fd is None:
            raise MechaError(f"{self.path}: the output was closed")
        try:
            pwrite_all(self._fd, data, offset)
        except OSError as error:
            raise self._write_error(error) from None

    def _write_error(self, error: OSError) -> MechaError:
        if error.errno == errno.ENOSPC:
            return MechaError(f"disk full while writing {str(self.path)!r}; the output was not written "
                              f"(an existing file there is untouched)")
        return MechaError(f"cannot write {str(self.path)!r}: {error.strerror}")

    def commit(self) -> Path:
        """Flush to disk and rename into place."""
        assert self._fd is not None and self._temp is not None
        try:
            self._close_direct(discard=False)
            os.fsync(self._fd)
            os.fchmod(self._fd, _default_mode())
            fd, self._fd = self._fd, None
            os.close(fd)
            refuse_writing_over_inputs(self.path, self._inputs)  # again: the folder may have changed meanwhile
            os.replace(self._temp, self.path)
        except OSError as error:
            raise MechaError(f"cannot finish writing {str(self.path)!r}: {error.strerror}") from None
        if not self.part:
            _committed.append(self.path)
        self._temp = None
        fsync_folder(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Remove the temporary file; the target is left as it was."""
        fd, temp = self._fd, self._temp
        self._fd = self._temp = None
        try:
            self._close_direct(discard=True)
            if fd is not None:
                os.close(fd)
        finally:  # even if a second Ctrl-C lands here, the temporary file goes
            if temp is not None:
                _drop_temp(temp, self._temp_id, self.path, self.part)

    def _close_direct(self, *, discard: bool) -> None:
        """Finish the direct writes still queued (or drop them, for an abandoned output)."""
        direct, self._direct = self._direct, None
        if direct is not None:
            try:
                direct.close(discard=discard)
            except OSError as error:
                raise self._write_error(error) from None

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._temp is not None or self._fd is not None:
            self.abort()


def _target(path: Path) -> Path:
    """The file a write to `path` lands in: through a symlink to its target, so the link survives."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _check_name(path: Path) -> None:
    """Refuse a file name longer than the file system allows (the temporary name always fits)."""
    folder = path.parent
    limit = _name_max(folder) if folder.is_dir() else 255
    if len(os.fsencode(path.name)) > limit:
        raise MechaError(f"output name {path.name[:40]!r}... is {len(os.fsencode(path.name))} bytes long; the file "
                         f"system of {str(folder)!r} allows at most {limit}")


def _check_target(path: Path, inputs: dict[FileId, str]) -> None:
    """Refuse an output that cannot be written, or that is one of the inputs, before any work."""
    folder = path.parent
    if not folder.is_dir():
        raise MechaError(f"output folder {str(folder)!r} does not exist; create it first")
    if path.is_dir():
        raise MechaError(f"output {str(path)!r} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise MechaError(f"output {str(path)!r} exists and is not a regular file (a device or pipe?); "
                         f"choose another output name")
    refuse_writing_over_inputs(path, inputs)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _temp_name(path: Path) -> str:
    """``.NAME.HOST-PID-RANDOM.mecha-tmp``, NAME cut short so the whole fits the file system's name limit."""
    tag = f".{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    room = _name_max(path.parent) - 1 - len(tag)
    name = os.fsencode(path.name)[:max(room, 1)].decode("utf-8", "ignore") or "out"
    return "." + name + tag


def _make_temp(path: Path) -> tuple[int, Path]:
    """A new temporary file next to `path` (same file system, so the final rename is atomic)."""
    remove_stale_temporaries(path.parent)
    for _ in range(100):
        temp = path.parent / _temp_name(path)
        try:
            return os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600), temp
        except FileExistsError:
            continue
        except OSError as error:
            raise MechaError(f"cannot create a file in {str(path.parent)!r}: {error.strerror}") from None
    raise MechaError(f"cannot create a file in {str(path.parent)!r}: every temporary name tried exists")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files that writers of this host, now gone, left in `folder` (killed by
    SIGKILL, a power cut...). Only regular files of ours by name and owner, whose writer process no
    longer exists, are removed; a folder that cannot be listed is left alone. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or match.group(1) != _HOST or _alive(int(match.group(2))):
            continue
        try:
            status = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(status.st_mode) and status.st_uid == getattr(os, "getuid", lambda: status.st_uid)():
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or no way to tell: keep the file
    return True


def _drop_temp(temp: Path, temp_id: FileId | None, target: Path, part: bool = False) -> None:
    """Remove a temporary file, unless it was already renamed over `target` (an interrupt arrived
    between the rename and its bookkeeping): then the output is complete and counts as written."""
    try:
        landed = temp_id is not None and not temp.exists() and file_id(os.stat(target)) == temp_id
    except OSError:
        landed = False
    if landed:
        if not part:  # a record per rename: the same path may be written again by a later command
            _committed.append(target)
        return
    temp.unlink(missing_ok=True)


def committed_outputs() -> list[Path]:
    """Every output this process renamed into place, oldest first (the CLI says whether one was)."""
    return list(_committed)


def mark_committed(path: Path) -> None:
    """Count an output renamed into place by another writer (a model folder) as written."""
    _committed.append(path)


def _default_mode() -> int:
    """The permissions a plain ``open()`` would give a new file (mkstemp's are owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str, *, inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Write a small text file (a recipe) through a temporary file and a rename, never over `inputs`."""
    return write_bytes_atomically(path, text.encode("utf-8"), inputs=inputs)


def write_bytes_atomically(path: Path, data: bytes, *, inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Write a small file (a recipe, a picture) through a temporary file and a rename, never over `inputs`."""
    _check_name(path)
    path = _target(path)
    known = identities(inputs)
    _check_target(path, known)
    fd, temp = _make_temp(path)
    temp_id = None
    try:
        temp_id = file_id(os.fstat(fd))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), _default_mode())
        refuse_writing_over_inputs(path, known)
        os.replace(temp, path)
        _committed.append(path)
    except OSError as error:
        _drop_temp(temp, temp_id, path)
        raise MechaError(f"cannot write {str(path)!r}: {error.strerror}") from None
    except BaseException:
        _drop_temp(temp, temp_id, path)
        raise
    fsync_folder(path.parent)
    return path


def save_tensors(tensors: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None,
                 *, inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Write a dict of tensors as a safetensors file, atomically."""
    entries = [(name, dtypes.name_of(t.dtype), tuple(t.shape)) for name, t in tensors.items()]
    with OutputFile(path, entries, metadata or {}, inputs=inputs) as out:
        for name, tensor in tensors.items():
            out.write(name, tensor.detach().to("cpu").contiguous())
        return out.commit()
