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
the same block. A write that continues where the same thread's last one ended (the next chunk of
a key) goes on filling that thread's staging buffer, block boundary or not, so a key's chunks reach
the device in full buffers (large writes run faster than small ones; README, Speed and memory) and
their shared blocks are written direct. The writer writes the partial blocks too (copied, a few
KiB): a page-cache write waits for the file's lock, which a direct write in flight holds, and a
worker waiting there idles its core. A few staging buffers
bound the memory: a worker waits only when all of them are queued. Where ``O_DIRECT`` is missing or
refused (not Linux, tmpfs, some FUSE and network file systems), every write goes through the page
cache, from the worker.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import mmap
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

BLOCK = max(4096, mmap.PAGESIZE)  # a page: no page holds both page-cache and direct bytes
STAGE_BYTES = 8 << 20  # one system call writes this much
STAGES = 4  # buffers queued or being written at most, besides the one each worker thread is filling


class DirectWrites:
    """Byte ranges written into an open file: whole aligned blocks direct from a writer thread, the
    rest through `buffered`.

    `buffered(data, offset)` writes a memoryview through the page cache; it also takes every write
    once the file system has refused direct I/O, or all of them when `direct` is False (a file that
    is read back at once). :meth:`close` waits for the queued writes and raises the first error the
    writer met; a write after such an error raises it at once."""

    def __init__(self, path: str | os.PathLike[str], buffered: Callable[[memoryview, int], None], *,
                 direct: bool = True) -> None:
        self._buffered = buffered
        self._fd: int | None = None
        self._refused = False  # set by the writer when the file system rejects direct I/O
        self._discard = False  # set when the output is abandoned: queued writes are dropped
        self._error: BaseException | None = None
        self._free: queue.Queue[memoryview] = queue.Queue()
        # (bytes, count, offset, whether the bytes are a staging buffer to write direct and free)
        self._pending: queue.Queue[tuple[memoryview, int, int, bool] | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._filling: dict[int, _Stage] = {}  # by thread: the staging buffer the thread is filling
        flag = getattr(os, "O_DIRECT", 0)
        if not flag or not direct:
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
        if not self.active:
            self._buffered(tensor_bytes(data), offset)
            return
        thread = threading.get_ident()
        if thread not in self._filling:  # a buffer more for each thread that writes: none waits on another's
            self._free.put(memoryview(mmap.mmap(-1, STAGE_BYTES)))
            self._filling[thread] = _Stage()
        stage = self._filling[thread]
        position = offset
        while position < end:
            if stage.buffer is None or position != stage.end:
                self._queue_stage(stage)
                aligned = -(-position // BLOCK) * BLOCK
                if aligned > position or end - position < BLOCK:  # a partial block: through the page cache
                    piece_end = min(aligned, end) if aligned > position else end
                    self._queue_buffered(tensor_bytes(data[position - offset:piece_end - offset]), position)
                    position = piece_end
                    continue
                stage.buffer, stage.start, stage.filled = self._free.get(), position, 0  # waits while all are queued
            count = min(STAGE_BYTES - stage.filled, end - position)
            # torch's copy leaves the GIL to the other workers
            torch.frombuffer(stage.buffer, dtype=torch.uint8, count=count, offset=stage.filled).copy_(
                data[position - offset:position - offset + count])
            stage.filled += count
            position += count
            if stage.filled == STAGE_BYTES:
                self._queue_stage(stage)

    def _queue_stage(self, stage: _Stage) -> None:
        """Hand a thread's staging buffer to the writer: its whole blocks direct, a partial last block
        through the page cache."""
        if stage.buffer is None:
            return
        whole = stage.filled // BLOCK * BLOCK
        if whole < stage.filled:
            self._queue_buffered(stage.buffer[whole:stage.filled], stage.start + whole)
        if whole:
            self._pending.put((stage.buffer, whole, stage.start, True))
        else:
            self._free.put(stage.buffer)
        stage.buffer = None

    def _queue_buffered(self, data: memoryview, offset: int) -> None:
        """Hand a piece smaller than two blocks to the writer, copied (its memory may be reused next)."""
        piece = memoryview(bytes(data))
        self._pending.put((piece, len(piece), offset, False))

    def close(self, *, discard: bool = False) -> None:
        """Finish (or, with `discard`, drop) the queued writes and close; raises the writer's first
        error. Call when no write is running."""
        if self._writer is not None:
            self._discard = discard
            for stage in self._filling.values():
                self._queue_stage(stage)
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
        """The writer thread: each queued staging buffer (direct) or piece (page cache) to its offset,
        in order, until close()."""
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


@dataclasses.dataclass
class _Stage:
    """A staging buffer a worker thread is filling: its bytes [0, filled) go to the file at `start`."""

    buffer: memoryview | None = None
    start: int = 0
    filled: int = 0

    @property
    def end(self) -> int:
        return self.start + self.filled


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of `data` at `offset` of the open file `fd` through the page cache (``pwrite`` may
    write less than asked); raises OSError."""
    while data:
        written = os.pwrite(fd, data, offset)
        if written <= 0:
            raise OSError(errno.EIO, "the file system accepted no bytes")
        data = data[written:]
        offset += written


def tensor_bytes(tensor: Any) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor (no numpy needed)."""
    size = tensor.numel() * tensor.element_size()
    if size == 0:
        return memoryview(b"")
    buffer = (ctypes.c_char * size).from_address(tensor.data_ptr())
    buffer.owner = tensor  # the view keeps the tensor's memory alive
    return memoryview(buffer).cast("B")
