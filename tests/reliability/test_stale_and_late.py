"""Items 11 and 13 of issue 19: temporary files of writers that are gone are removed by the next
write into the folder (only ours, only when the writer is dead), and a signal arriving after the
output was renamed into place says that the output is there and complete."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import safetensors
import torch

from mecha_core import output_file
from mecha_core.cli import Terminated
from mecha_core.output_file import TEMP_SUFFIX, remove_stale_temporaries, save_tensors

from .conftest import error_line, run, temp_files


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# 11 ------------------------------------------------------------------------------------------------
def test_only_our_temporaries_of_dead_writers_are_removed(folder):
    host, dead = output_file._HOST, _dead_pid()
    stale = folder / f".out.safetensors.{host}-{dead}-0123abcd{TEMP_SUFFIX}"
    running = folder / f".out.safetensors.{host}-{os.getppid()}-0123abcd{TEMP_SUFFIX}"  # pytest's parent lives
    other_host = folder / f".out.safetensors.{'f' * 8 if host != 'f' * 8 else '0' * 8}-{dead}-0123abcd{TEMP_SUFFIX}"
    not_ours = folder / f".out.safetensors.{host}-{dead}-0123abcd.tmp"
    old_style = folder / f".out.safetensors.k2j3h4{TEMP_SUFFIX}"  # no writer in the name: cannot tell, kept
    link = folder / f".link.{host}-{dead}-89abcdef{TEMP_SUFFIX}"
    for path in (stale, running, other_host, not_ours, old_style):
        path.write_bytes(b"half a model")
    link.symlink_to(folder / "a.safetensors")
    save_tensors({"w": torch.ones(2)}, folder / "out.safetensors")
    assert not stale.exists()
    assert all(p.exists() for p in (running, other_host, not_ours, old_style)) and link.is_symlink()
    assert (folder / "a.safetensors").is_file()
    assert remove_stale_temporaries(folder) == []


def test_a_merge_cleans_its_output_folder_of_dead_writers_temporaries(folder, capsys):
    stale = folder / f".out.safetensors.{output_file._HOST}-{_dead_pid()}-0123abcd{TEMP_SUFFIX}"
    stale.write_bytes(b"x" * 1000)
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 0, err
    assert temp_files(folder) == []


# 13 ------------------------------------------------------------------------------------------------
def _late_signal_after_rename(monkeypatch, where: str) -> None:
    """SIGTERM's exception, raised just after the rename (in the rename's own call, or the folder sync)."""
    if where == "right after the rename":
        real_replace = os.replace

        def replace_then_terminate(source, target):
            real_replace(source, target)
            if str(source).endswith(TEMP_SUFFIX):
                raise Terminated(signal.SIGTERM)

        monkeypatch.setattr(os, "replace", replace_then_terminate)
    else:
        def terminate(folder):
            raise Terminated(signal.SIGTERM)

        monkeypatch.setattr(output_file, "fsync_folder", terminate)


@pytest.mark.parametrize("where", ["right after the rename", "during the folder sync"])
def test_a_late_sigterm_tells_the_truth_about_the_output(folder, capsys, monkeypatch, where):
    _late_signal_after_rename(monkeypatch, where)
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet", "--save-dtype", "fp32")
    assert status == 0
    assert error_line(err) == "mecha: terminated after writing out.safetensors, which is complete"
    with safetensors.safe_open(str(folder / "out.safetensors"), "pt") as f:
        assert f.get_tensor("w").unique().tolist() == [2.0]
    assert temp_files(folder) == []


def test_a_sigterm_before_the_rename_still_says_nothing_was_written(folder, capsys, monkeypatch):
    def terminate(*args):
        raise Terminated(signal.SIGTERM)

    monkeypatch.setattr(os, "fsync", terminate)
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 143 and error_line(err) == "mecha: terminated; no output was written"
    assert not (folder / "out.safetensors").exists() and temp_files(folder) == []
