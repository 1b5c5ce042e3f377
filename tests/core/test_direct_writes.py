"""Writes past the page cache: every byte lands where it was sent, whichever path carries it."""

from __future__ import annotations

import errno
import os
import random
import threading
from pathlib import Path

import pytest
import torch

from mecha_core import direct_writes
from mecha_core.direct_writes import BLOCK, DirectWrites


class File:
    """A file of `size` zero bytes with an ordinary descriptor for the buffered path, and a log of
    the bytes that path was given."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        path.write_bytes(bytes(size))
        self.fd = os.open(path, os.O_WRONLY)
        self.buffered_bytes = 0
        self.lock = threading.Lock()

    def buffered(self, data: memoryview, offset: int) -> None:
        with self.lock:
            self.buffered_bytes += len(data)
            assert os.pwrite(self.fd, data, offset) == len(data)

    def close(self) -> bytes:
        os.close(self.fd)
        return self.path.read_bytes()


def random_writes(size: int, seed: int) -> list[tuple[int, bytes]]:
    """Disjoint byte ranges covering [0, size): lengths from one byte to several blocks, odd offsets."""
    rng = random.Random(seed)
    writes, offset = [], 0
    while offset < size:
        length = min(size - offset, rng.choice([1, 3, BLOCK - 1, BLOCK, BLOCK + 5, 3 * BLOCK + 17, 40_000]))
        writes.append((offset, rng.randbytes(length)))
        offset += length
    rng.shuffle(writes)  # workers finish in any order
    return writes


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def fail_direct_writes(monkeypatch, file: File, error: int, after: int = 0) -> list[int]:
    """Make writes on the direct descriptor (any but `file`'s own) raise `error` after the first
    `after` succeed; returns the offsets the direct writes were sent to."""
    real_pwrite, direct_calls = os.pwrite, []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if fd != file.fd:
            direct_calls.append(offset)
            if len(direct_calls) > after:
                raise OSError(error, os.strerror(error))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return direct_calls


@pytest.fixture
def small_stages(monkeypatch):
    """Stages of three blocks, so that a write spans several and the workers wait for free ones."""
    monkeypatch.setattr(direct_writes, "STAGE_BYTES", 3 * BLOCK)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "no-O_DIRECT"])
def test_every_byte_lands_at_its_offset(tmp_path, monkeypatch, small_stages, direct):
    if not direct:
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    size = 30 * BLOCK + 123
    writes = random_writes(size, seed=1)
    file = File(tmp_path / "out", size)
    writer = DirectWrites(file.path, file.buffered)
    if direct and not writer.active:
        pytest.skip("this file system refuses O_DIRECT")
    assert writer.active == direct
    for offset, data in writes:
        writer.write(as_tensor(data), offset)
    writer.close()
    expected = bytearray(size)
    for offset, data in writes:
        expected[offset:offset + len(data)] = data
    assert file.close() == bytes(expected)
    # direct: only the partial blocks at the ends of writes went through the page cache
    assert (file.buffered_bytes < size // 2) if direct else file.buffered_bytes == size


def test_concurrent_writers_of_wide_tensors(tmp_path, small_stages):
    """Four threads writing float16 tensors at unaligned offsets, as the merge's workers do."""
    count, elements = 16, 5 * BLOCK + 7
    size = 2 * count * elements + 2
    file = File(tmp_path / "out", size)
    writer = DirectWrites(file.path, file.buffered)
    tensors = [torch.randn(elements).to(torch.float16) for _ in range(count)]

    def work(indexes: range) -> None:
        for index in indexes:
            writer.write(tensors[index], 2 + 2 * elements * index)

    threads = [threading.Thread(target=work, args=(range(start, count, 4),)) for start in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    content = file.close()
    assert content[:2] == b"\0\0"
    written = torch.frombuffer(bytearray(content[2:]), dtype=torch.int16)
    assert torch.equal(written, torch.cat(tensors).view(torch.int16))  # bit for bit


def test_a_keys_chunks_fill_one_buffer_and_their_shared_blocks_go_direct(tmp_path, monkeypatch, small_stages):
    """Chunks of a key, written one after another by one thread, continue one another: only the
    partial blocks at the key's two ends go through the page cache."""
    size = 40 * BLOCK
    file = File(tmp_path / "out", size)
    writer = DirectWrites(file.path, file.buffered)
    if not writer.active:
        pytest.skip("this file system refuses O_DIRECT")
    data = os.urandom(size)
    start, stop = 100, size - 77  # the key's bytes; chunks of 3 blocks and a bit
    for offset in range(start, stop, 3 * BLOCK + 10):
        writer.write(as_tensor(data[offset:min(offset + 3 * BLOCK + 10, stop)]), offset)
    writer.close()
    expected = bytes(start) + data[start:stop] + bytes(size - stop)
    assert file.close() == expected
    assert file.buffered_bytes == (BLOCK - start) + (BLOCK - 77)


def test_a_refusal_mid_way_sends_the_rest_through_the_page_cache(tmp_path, monkeypatch, small_stages):
    size = 20 * BLOCK
    file = File(tmp_path / "out", size)
    direct_calls = fail_direct_writes(monkeypatch, file, errno.EINVAL, after=1)  # as some FUSE mounts do
    writer = DirectWrites(file.path, file.buffered)
    if not writer.active:
        pytest.skip("this file system refuses O_DIRECT")
    data = os.urandom(size)
    writer.write(as_tensor(data[:10 * BLOCK]), 0)
    writer.write(as_tensor(data[10 * BLOCK:]), 10 * BLOCK)
    writer.close()
    assert len(direct_calls) == 2 and not writer.active
    assert file.close() == data


def test_a_failing_direct_write_is_raised_by_the_next_write_and_by_close(tmp_path, monkeypatch, small_stages):
    file = File(tmp_path / "out", 40 * BLOCK)
    fail_direct_writes(monkeypatch, file, errno.EIO)
    writer = DirectWrites(file.path, file.buffered)
    if not writer.active:
        pytest.skip("this file system refuses O_DIRECT")
    writer.write(as_tensor(bytes(4 * BLOCK)), 0)
    with pytest.raises(OSError) as raised:
        for index in range(1, 10):  # the writer thread fails in the background; a later write tells
            writer.write(as_tensor(bytes(4 * BLOCK)), 4 * BLOCK * index)
        writer.close()
    assert raised.value.errno == errno.EIO
    writer.close(discard=True)  # an abandoned output: nothing more is raised
    file.close()


@pytest.mark.parametrize("discard", [False, True])
def test_closing_ends_the_writer_thread(tmp_path, small_stages, discard):
    file = File(tmp_path / "out", 12 * BLOCK)
    writer = DirectWrites(file.path, file.buffered)
    writer.write(as_tensor(b"\1" * (12 * BLOCK)), 0)
    writer.close(discard=discard)
    assert not writer.active
    assert not [t for t in threading.enumerate() if t.name == "mecha-writer"]
    if not discard:
        assert file.close() == b"\1" * (12 * BLOCK)
    else:
        file.close()
