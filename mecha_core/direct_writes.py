"""Writing a merge's results past the page cache (``O_DIRECT``), in the background, where the system allows it.

A merge writes gigabytes once and never reads them back. Through the page cache, every byte is
first copied into a newly allocated kernel page; those pages crowd out the inputs the merge is still
reading, and once they reach the kernel's dirty limit the workers are throttled while the disk
catches up, their cores idle. Written directly, the bytes go from a few reused buffers to the device.

Direct I/O wants the file offset, the length and the memory address aligned to the device's block.
So a write is split: its whole blocks are copied into a page-aligned staging buffer, which a writer
thread hands to the device while the worker computes on; the partial blocks at the write's two ends
go through the page cache. A block either lies wholly inside one write or is shared with a
neighbouring write, so each block of the file is written one way only and the two paths never touch
the same block. The writer writes those partial blocks too (copied, a few KiB): a page-cache write
waits for the file's lock, which a direct write in flight holds, and a worker waiting there idles
its core (measured: 4.2 s of a 7.5 s SDXL bake). A few staging buffers bound the memory: a worker
waits only when all of them are queued. Where ``O_DIRECT`` is missing or refused (not Linux, tmpfs,
some FUSE and network file systems), every write goes through the page cache, from the worker.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

BLOCK = max(4096, mmap.PAGESIZE)  # a page: no page holds both page-cache and direct bytes
STAGE_BYTES = 8 << 20  # one system call writes this much
STAGES = 4  # buffers queued or being written at most: the device stays busy while workers fill the next


class DirectWrites:
    """Byte ranges written into an open file: whole aligned blocks direct from a writer thread, the
    rest through `buffered`.

    `buffered(data, offset)` writes a memoryview through the page cache; it also takes every write
    once the file system has refused direct I/O. :meth:`close` waits for the queued writes and
    raises the first error the writer met; a write after such an error raises it at once."""

    def __init__(self, path: str | os.PathLike[str], buffered: Callable[[memoryview, int], None]) -> None:
        self._buffered = buffered
        self._fd: int | None = None
        self._refused = False  # set by the writer when the file system rejects direct I/O
        self._discard = False  # set when the output is abandoned: queued writes are dropped
        self._error: BaseException | None = None
        self._free: queue.Queue[memoryview] = queue.Queue()
        # (bytes, count, offset, whether the bytes are a staging buffer to write direct and free)
        self._pending: queue.Queue[tuple[memoryview, int, int, bool] | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return
        try:
            self._fd = os.open(path, os.O_WRONLY | flag)
        except OSError:  # a file system without direct I/O
            return
        for _ in range(STAGES):  # memory is committed page by page, as the stages fill
            self._free.put(memoryview(mmap.mmap(-1, STAGE_BYTES)))
        self._writer = threading.Thread(target=self._write_queued, name="mecha-writer", daemon=True)
        self._writer.start()

    @property
    def active(self) -> bool:
        """Whether whole blocks are written direct (False where the file system refused)."""
        return self._fd is not None and not self._refused

    def write(self, tensor: Any, offset: int) -> None:
        """Write the bytes of a contiguous CPU tensor at byte `offset` of the file."""
        import torch
        self._raise_error()
        data = tensor.reshape(-1).view(torch.uint8)
        end = offset + data.numel()
        first, last = -(-offset // BLOCK) * BLOCK, end // BLOCK * BLOCK
        if not self.active:
            self._buffered(tensor_bytes(data), offset)
            return
        if last - first < BLOCK:  # no whole block: all of it through the page cache
            first = last = end
        if first > offset:
            self._queue_buffered(data[:first - offset], offset)
        for position in range(first, last, STAGE_BYTES):
            count = min(STAGE_BYTES, last - position)
            stage = self._free.get()  # waits while every stage is queued: the memory stays bounded
            # torch's copy leaves the GIL to the other workers
            torch.frombuffer(stage, dtype=torch.uint8, count=count).copy_(data[position - offset:position - offset + count])
            self._pending.put((stage, count, position, True))
        if end > last:
            self._queue_buffered(data[last - offset:], last)

    def _queue_buffered(self, data: Any, offset: int) -> None:
        """Hand a piece smaller than two blocks to the writer, copied (the tensor may be freed next)."""
        piece = memoryview(bytes(tensor_bytes(data)))
        self._pending.put((piece, len(piece), offset, False))

    def close(self, *, discard: bool = False) -> None:
        """Finish (or, with `discard`, drop) the queued writes and close; raises the writer's first
        error. Call when no write is running."""
        if self._writer is not None:
            self._discard = discard
            self._pending.put(None)
            self._writer.join()
            self._writer = None
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if not discard:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _write_queued(self) -> None:
        """The writer thread: each queued stage to its offset, in order, until close()."""
        while True:
            item = self._pending.get()
            if item is None:
                return
            data, count, offset, staged = item
            try:
                if self._error is None and not self._discard:
                    if staged:
                        self._write_stage(data, count, offset)
                    else:
                        self._buffered(data, offset)
            except BaseException as error:  # kept for the workers and close() to raise
                self._error = error
            if staged:
                self._free.put(data)

    def _write_stage(self, data: memoryview, count: int, offset: int) -> None:
        written = 0
        while written < count and not self._refused:
            assert self._fd is not None
            try:
                done = os.pwrite(self._fd, data[written:count], offset + written)
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                self._refused = True  # from now on every write goes through the page cache
                break
            if done <= 0:
                break
            written += done
        if written < count:
            self._buffered(data[written:count], offset + written)


def tensor_bytes(tensor: Any) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor (no numpy needed)."""
    size = tensor.numel() * tensor.element_size()
    if size == 0:
        return memoryview(b"")
    buffer = (ctypes.c_char * size).from_address(tensor.data_ptr())
    buffer.owner = tensor  # the view keeps the tensor's memory alive
    return memoryview(buffer).cast("B")
