"""The output is all or nothing: written to a temporary file in the target folder and renamed into
place only when complete and flushed; any failure removes the temporary file and leaves an existing
output as it was. Inputs are opened read-only and never overwritten."""

from __future__ import annotations

import errno
import mmap
import os
import signal
import stat
import threading
from pathlib import Path

import pytest
import safetensors
import torch

import mecha_core as mc
from mecha_core.errors import Signalled
from mecha_core.output_file import save_tensors

from .conftest import error_line, recipe_file, run, save, snapshot, temp_files

OLD = b"the previous output, which must survive"


@pytest.fixture
def folder(plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two 64 KiB models (four keys each), a recipe merging them, and an existing output."""
    monkeypatch.chdir(tmp_path)
    for name, value in (("a", 1.0), ("b", 3.0)):
        save({f"k{i}": torch.full((128, 128), value + i) for i in range(4)}, tmp_path / f"{name}.safetensors")
    recipe_file(tmp_path, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1 alpha=0.5\n')
    (tmp_path / "out.safetensors").write_bytes(OLD)
    return tmp_path


def merge(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    return run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet", "--save-dtype", "fp32", *extra)


def test_a_successful_merge_replaces_the_output_and_leaves_no_temporary_file(folder, capsys):
    inputs = {name: (folder / name).read_bytes() for name in ("a.safetensors", "b.safetensors")}
    status, _, err = merge(capsys)
    assert status == 0, err
    with safetensors.safe_open(str(folder / "out.safetensors"), "pt") as f:
        for i in range(4):
            assert f.get_tensor(f"k{i}").unique().tolist() == [2.0 + i]
    assert temp_files(folder) == []
    assert all((folder / name).read_bytes() == data for name, data in inputs.items())
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((folder / "out.safetensors").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


class Boom(Exception):
    pass


@pytest.fixture
def exploding(plugins):
    """A merge method that fails on the third key it sees."""
    seen: list[str] = []

    @mc.merge_method
    def explode(a: mc.Same, b: mc.Same, *, key: str = "") -> mc.Same:
        seen.append(key)
        if len(seen) == 3:
            raise Boom("the third key")
        return a

    class Plugin:
        @mc.hookimpl
        def mecha_merge_methods(self):
            return [explode]

    plugins.register(Plugin(), "exploding")
    return seen


def test_an_exception_mid_merge_leaves_the_old_output(folder, capsys, exploding):
    recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "explode" &0 &1\n')
    before = snapshot(folder)
    status, _, err = merge(capsys, "--threads", "1")
    assert status == 1 and len(exploding) == 3
    assert error_line(err) == (f"mecha: error: merge method 'explode' from plugin 'exploding' failed on key "
                               f"'{exploding[2]}': Boom: the third key")
    assert snapshot(folder) == before


def test_ctrl_c_mid_merge_leaves_the_old_output(folder, capsys, plugins):
    """Ctrl-C's KeyboardInterrupt, as the CLI's handler raises it, from inside the merge (the subprocess
    test sends a real one); a bare KeyboardInterrupt raised by a plugin is that plugin's error."""
    calls = []

    @mc.merge_method
    def interrupt(a: mc.Same, b: mc.Same) -> mc.Same:
        calls.append(1)
        if len(calls) == 2:
            raise Signalled(signal.SIGINT)
        return a

    class Plugin:
        @mc.hookimpl
        def mecha_merge_methods(self):
            return [interrupt]

    plugins.register(Plugin(), "interrupting")
    recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "interrupt" &0 &1\n')
    before = snapshot(folder)
    status, _, err = merge(capsys, "--threads", "1")
    assert status == 130 and error_line(err) == "mecha: interrupted; no output was written", err
    assert snapshot(folder) == before


class FullDisk:
    """os.pwrite that accepts `budget` bytes in all, then fails with ENOSPC (thread-safe)."""

    def __init__(self, budget: int, error: int = errno.ENOSPC) -> None:
        self.budget = budget
        self.error = error
        self.written = 0
        self.lock = threading.Lock()
        self.real = os.pwrite

    def __call__(self, fd: int, data: bytes, offset: int) -> int:
        with self.lock:
            room = self.budget - self.written
            if room <= 0:
                raise OSError(self.error, os.strerror(self.error))
            count = self.real(fd, memoryview(data)[:room], offset)
            self.written += count
            return count


@pytest.mark.parametrize("threads", ["1", "3"])
def test_a_disk_that_fills_mid_write_leaves_the_old_output(folder, capsys, monkeypatch, threads):
    full = FullDisk(budget=100_000)  # the header and a key and a half of 64 KiB
    monkeypatch.setattr(os, "pwrite", full)
    before = snapshot(folder)
    status, _, err = merge(capsys, "--threads", threads)
    assert status == 1 and full.written == 100_000
    assert error_line(err) == ("mecha: error: disk full while writing 'out.safetensors'; the output was not written "
                               "(an existing file there is untouched)")
    assert snapshot(folder) == before


def test_another_write_error_leaves_the_old_output(folder, capsys, monkeypatch):
    monkeypatch.setattr(os, "pwrite", FullDisk(budget=50_000, error=errno.EIO))
    before = snapshot(folder)
    status, _, err = merge(capsys)
    assert status == 1
    assert error_line(err) == "mecha: error: cannot write 'out.safetensors': Input/output error"
    assert snapshot(folder) == before


def test_no_room_for_the_whole_output_is_found_before_merging(folder, capsys, monkeypatch, exploding):
    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "explode" &0 &1\n')
    before = snapshot(folder)
    status, _, err = merge(capsys)
    assert status == 1 and exploding == []  # refused before the first key
    size = (8 + 4 * 128 * 128 * 4) / 1e9
    assert error_line(err) == f"mecha: error: not enough disk space in '.' for the {size:.2f} GB output"
    assert snapshot(folder) == before


def test_a_failing_flush_leaves_the_old_output(folder, capsys, monkeypatch):
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    before = snapshot(folder)
    status, _, err = merge(capsys)
    assert status == 1
    assert error_line(err) == "mecha: error: cannot finish writing 'out.safetensors': Input/output error"
    assert snapshot(folder) == before


def test_an_unwritable_folder_is_a_clear_error(folder, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    real_open = os.open

    def refuse_temporary(path, flags, *args, **kwargs):
        if os.fspath(path).endswith(".mecha-tmp"):
            refuse()
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_temporary)  # root ignores permissions; simulate them
    before = snapshot(folder)
    status, _, err = merge(capsys)
    assert status == 1 and error_line(err) == "mecha: error: cannot create a file in '.': Permission denied"
    assert snapshot(folder) == before


@pytest.mark.parametrize("target", ["a.safetensors", "./sub/../a.safetensors", "{folder}/b.safetensors",
                                    "hardlink.safetensors", "symlink.safetensors"])
def test_writing_over_an_input_is_refused(folder, capsys, target):
    (folder / "sub").mkdir()
    os.link(folder / "a.safetensors", folder / "hardlink.safetensors")
    os.symlink(folder / "b.safetensors", folder / "symlink.safetensors")
    target = target.format(folder=folder)
    before = snapshot(folder)
    status, _, err = run(capsys, "merge", "r.mecha", "-o", target, "--quiet")
    assert status == 1
    source = "a.safetensors" if target in ("./sub/../a.safetensors", "hardlink.safetensors", "a.safetensors") \
        else "b.safetensors"
    alias = " (the same file as 'hardlink.safetensors')" if target == "hardlink.safetensors" else ""
    assert error_line(err) == (f"mecha: error: refusing to write the output over the input '{source}'{alias}; choose "
                               f"another output name")
    assert snapshot(folder) == before


def test_writing_over_the_fallback_model_is_refused(folder, capsys):
    save({"extra": torch.ones(2)}, folder / "c.safetensors")
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "c.safetensors", "--fallback", "c.safetensors")
    assert status == 1 and "refusing to write the output over the input 'c.safetensors'" in error_line(err)


def test_a_missing_output_folder_is_a_clear_error(folder, capsys):
    before = snapshot(folder)
    status, _, err = merge(capsys, "-o", "no/such/folder/out.safetensors")
    assert status == 1
    assert error_line(err) == "mecha: error: output folder 'no/such/folder' does not exist; create it first"
    assert snapshot(folder) == before


def test_an_output_that_is_a_folder_or_a_pipe_is_refused(folder, capsys):
    (folder / "dir.safetensors").mkdir()
    status, _, err = merge(capsys, "-o", "dir.safetensors")
    assert status == 1 and error_line(err) == "mecha: error: output 'dir.safetensors' is a folder; give a file name"
    os.mkfifo(folder / "pipe.safetensors")
    status, _, err = merge(capsys, "-o", "pipe.safetensors")
    assert status == 1
    assert error_line(err) == ("mecha: error: output 'pipe.safetensors' exists and is not a regular file (a device or "
                               "pipe?); choose another output name")
    assert stat.S_ISFIFO((folder / "pipe.safetensors").lstat().st_mode)


def test_an_output_symlink_is_kept_and_its_target_replaced(folder, capsys):
    (folder / "store").mkdir()
    real = folder / "store" / "real.safetensors"
    real.write_bytes(OLD)
    (folder / "link.safetensors").symlink_to(real)
    status, _, err = merge(capsys, "-o", "link.safetensors")
    assert status == 0, err
    assert (folder / "link.safetensors").is_symlink() and real.read_bytes() != OLD
    with safetensors.safe_open(str(real), "pt") as f:
        assert f.get_tensor("k0").unique().tolist() == [2.0]
    assert temp_files(folder) == []


def test_inputs_are_opened_read_only(folder, capsys, monkeypatch):
    """Every open of an input asks for read-only access, and inputs are not mapped (they are read with preadv)."""
    opens: list[tuple[str, int]] = []
    maps: list[int] = []
    real_open, real_mmap = os.open, mmap.mmap

    def spy_open(path, flags, *args, **kwargs):
        opens.append((os.path.basename(os.fspath(path)), flags))
        return real_open(path, flags, *args, **kwargs)

    def spy_mmap(fd, length, *args, **kwargs):
        if fd != -1:  # not anonymous memory (the output's staging buffers)
            maps.append(kwargs.get("access"))
        return real_mmap(fd, length, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(mmap, "mmap", spy_mmap)
    inputs = {name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns)
              for name in ("a.safetensors", "b.safetensors")}
    status, _, err = merge(capsys)
    assert status == 0, err
    input_opens = [flags for name, flags in opens if name in inputs]
    assert len(input_opens) == 2 and all(flags & os.O_ACCMODE == os.O_RDONLY for flags in input_opens)
    assert maps == []
    for name, (data, mtime) in inputs.items():
        assert (folder / name).read_bytes() == data and (folder / name).stat().st_mtime_ns == mtime


def test_compose_writes_its_recipe_atomically(folder, capsys):
    template = recipe_file(folder, 'parameter "x"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1\n', "t.mecha")
    (folder / "composed.mecha").write_text("# the previous recipe\n")
    status, _, err = run(capsys, "compose", template, "-p", "y", "a.safetensors", "-o", "composed.mecha")
    assert status == 1 and error_line(err) == "mecha: error: unknown recipe parameter 'y'; available recipe parameters: x"
    assert (folder / "composed.mecha").read_text() == "# the previous recipe\n"
    status, _, err = run(capsys, "compose", template, "-p", "x", "a.safetensors", "-o", "nowhere/c.mecha")
    assert status == 1 and error_line(err) == "mecha: error: output folder 'nowhere' does not exist; create it first"
    status, _, err = run(capsys, "compose", template, "-p", "x", "a.safetensors", "-o", "composed.mecha")
    assert status == 0, err
    assert mc.deserialize(folder / "composed.mecha").models()[0].source == "a.safetensors"
    assert temp_files(folder) == []


def test_the_python_api_keeps_the_same_promises(folder, monkeypatch):
    monkeypatch.setattr(os, "pwrite", FullDisk(budget=10))
    before = snapshot(folder)
    with pytest.raises(mc.MechaError, match="disk full"):
        save_tensors({"w": torch.ones(100)}, folder / "out.safetensors")
    with pytest.raises(mc.MechaError, match="disk full"):
        mc.merge(mc.deserialize(folder / "r.mecha"), folder / "out.safetensors")
    assert snapshot(folder) == before
