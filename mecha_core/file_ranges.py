"""Ranges of one output file written in place by other processes (an executor's workers), each
checked by the process that created the file.

Shared file systems such as NFS may lose writes when two clients write into the same page (each
caches the page and sends it back), so every page of the file has one writer: the file is cut at
multiples of :data:`RANGE_UNIT` (a whole number of pages on any node), and each range goes to one
worker. The creator wrote the header and set the file's size (``fallocate``) before any range
was handed out; no worker changes either. The units holding the header stay the creator's: the
tensor bytes sharing them are computed by the first range's worker and returned to the creator,
which writes them. A tensor straddling a cut is computed by both neighbours, each writing its own
clip.

A worker writes its range through the page cache, fsyncs it and reports its digest (SHA-256) as it
reads it back (from memory: direct writes, as a local merge makes, would send that read to the
disk); the creator reads the range again from the file, its node's view of the shared storage, and
commits only when both agree.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import os
import threading
from typing import TYPE_CHECKING, Any

from .direct_writes import pwrite_all, tensor_bytes
from .errors import MechaError
from .scheduler import Sink

if TYPE_CHECKING:
    from .executor_spec import Part

# cuts fall on multiples of this: a whole number of pages of any size Linux uses (4, 16, 64 KiB), on
# every node; only a range's two ends lie on it, so a larger unit would make no write faster
RANGE_UNIT = 64 << 10
DIGEST_BLOCK = 64 << 20  # a range's digest is over the digests of blocks of this size
READ_BLOCK = 8 << 20


def cut(header_size: int, total_size: int, count: int) -> list[tuple[int, int]]:
    """At most `count` ranges ``[start, end)`` of a file of `total_size` bytes whose first
    `header_size` are its header: cut at multiples of :data:`RANGE_UNIT` into about equal sizes, the
    last ending at the file's end. The first starts at the end of the header's last unit (or at the
    file's end), the bytes before it being the creator's."""
    first = min(-(-header_size // RANGE_UNIT) * RANGE_UNIT, total_size)
    data = total_size - header_size
    cuts = sorted({(header_size + data * i // max(1, count)) // RANGE_UNIT * RANGE_UNIT for i in range(1, count)})
    starts = [first] + [c for c in cuts if first < c < total_size]
    return list(zip(starts, starts[1:] + [total_size]))


class RangeWriter(Sink):
    """A part's range of the output's temporary file at `path`, written in place as results arrive:
    each tensor's bytes clipped to ``[part.start, part.end)``; its bytes in the `part.returned`
    before `start` are kept in :attr:`head` for the creator. Tensors the part does not hold (a
    key's other tensors, stored in another range) are skipped."""

    def __init__(self, path: str, part: Part) -> None:
        self.path = path
        self.start, self.end = part.start, part.end
        self.head_start = part.start - part.returned
        self.head = bytearray(part.returned)
        self.offsets = {name: offset for (name, _, _), offset in zip(part.entries, part.offsets)}
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise MechaError(f"the output's temporary file {path!r} is gone (was the merge stopped, or is it not on "
                             f"storage this node shares?)") from None
        except OSError as error:
            raise MechaError(f"cannot open {path!r} for writing: {error.strerror}") from None
        self._lock = threading.Lock()  # one write at a time, as OutputFile's page-cache writes

    def write(self, name: str, tensor: Any, start_element: int = 0) -> None:
        offset = self.offsets.get(name)
        if offset is None or self._fd is None:
            return
        import torch
        data = tensor.reshape(-1).view(torch.uint8)
        first = offset + start_element * tensor.element_size()
        last = first + data.numel()
        low, high = max(first, self.start), min(last, self.end)
        if low < high:
            try:
                with self._lock:
                    pwrite_all(self._fd, tensor_bytes(data[low - first:high - first]), low)
            except OSError as error:
                raise self._error(error) from None
        low, high = max(first, self.head_start), min(last, self.start)
        if low < high:
            self.head[low - self.head_start:high - self.head_start] = tensor_bytes(data[low - first:high - first])

    def finish(self) -> tuple[int, str]:
        """Flush the range to storage; its size and digest as read back (:func:`range_digest`)."""
        assert self._fd is not None
        try:
            os.fsync(self._fd)
        except OSError as error:
            raise self._error(error) from None
        finally:
            self.close()
        return self.end - self.start, range_digest(self.path, self.start, self.end)

    def close(self) -> None:
        """Stop writing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _error(self, error: OSError) -> MechaError:
        if error.errno == errno.ENOSPC:
            return MechaError(f"disk full while writing {self.path!r}")
        return MechaError(f"cannot write {self.path!r}: {error.strerror}")


def range_digest(path: str, start: int, end: int) -> str:
    """The digest of bytes ``[start, end)`` of the file at `path`, read from storage: the SHA-256
    (hex) of the SHA-256s of its :data:`DIGEST_BLOCK` blocks, which are read and hashed side by side
    (one thread per core: a hash of one stream runs on one core, at a fraction of a disk's speed)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise MechaError(f"cannot read {path!r}: {error.strerror}") from None

    def block_digest(offset: int) -> bytes:
        digest = hashlib.sha256()
        position, stop = offset, min(offset + DIGEST_BLOCK, end)
        while position < stop:
            data = os.pread(fd, min(READ_BLOCK, stop - position), position)
            if not data:
                raise MechaError(f"{path!r} ends at byte {position}, before the {end} its writers wrote")
            digest.update(data)
            position += len(data)
        return digest.digest()

    try:
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            digests = list(pool.map(block_digest, range(start, end, DIGEST_BLOCK)))
    except OSError as error:
        raise MechaError(f"cannot read {path!r}: {error.strerror}") from None
    finally:
        os.close(fd)
    return hashlib.sha256(b"".join(digests)).hexdigest()
