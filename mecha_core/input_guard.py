"""No command writes over one of its inputs: the check every writer of mecha goes through.

Inputs are known by file identity (device and inode), not by name, so that a hard link, a symlink, a
bind mount or another spelling of the path cannot slip past. Two kinds of inputs count: the files a
writer is told about (the recipe, a template, sub-recipes, a converted pickle) and every model file
mecha holds open for reading at the time, which covers models, LoRAs and the fallback whatever the
code path that opened them (a plugin's save path included).
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import MechaError

FileId = tuple[int, int]  # (st_dev, st_ino)

_lock = threading.Lock()
_open: collections.Counter[FileId] = collections.Counter()  # model files open for reading, with their readers
_names: dict[FileId, str] = {}


def file_id(status: os.stat_result) -> FileId:
    return status.st_dev, status.st_ino


def reading(identity: FileId, label: str) -> None:
    """Note that a model file is open for reading (until :func:`done_reading`)."""
    with _lock:
        _open[identity] += 1
        _names.setdefault(identity, label)


def done_reading(identity: FileId) -> None:
    with _lock:
        _open[identity] -= 1
        if _open[identity] <= 0:
            del _open[identity]
            _names.pop(identity, None)


def identities(inputs: Iterable[str | os.PathLike[str]]) -> dict[FileId, str]:
    """The identity of each input that exists (one that does not cannot be written over)."""
    found: dict[FileId, str] = {}
    for source in inputs:
        try:
            found.setdefault(file_id(os.stat(source)), os.fspath(source))
        except (OSError, ValueError):
            continue
    return found


def refuse_writing_over_inputs(target: Path, inputs: Mapping[FileId, str]) -> None:
    """Raise when `target` (followed through symlinks) is one of `inputs` or a model file open for reading."""
    try:
        identity = file_id(os.stat(target))
    except (OSError, ValueError):
        return  # nothing there yet: it cannot be an input
    with _lock:
        source = inputs.get(identity) or _names.get(identity)
    if source is not None:
        same = "" if os.path.abspath(source) == os.path.abspath(target) else f" (the same file as {str(target)!r})"
        raise MechaError(f"refusing to write the output over the input {source!r}{same}; choose another output name")
