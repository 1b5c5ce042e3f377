"""What an executor is given and returns: the :class:`Executor` spec that ``mecha_executors()``
returns, the picklable :class:`MergeJob` with its :class:`Part` s, a worker's :class:`PartResult`, and
this process's :class:`LiveMerge`.

Kept below the plugin registry (which checks hook results against :class:`Executor`) and above
nothing but names; running a job is :mod:`mecha_core.executors`' job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .names import validate_name

if TYPE_CHECKING:
    from .output_file import OutputFile
    from .output_folder import OutputFolder
    from .planning import MergePlan
    from .scheduler import Progress, Sink

Entry = tuple[str, str, tuple[int, ...]]  # tensor name (as the output spells it), torch dtype name, shape


@dataclasses.dataclass(frozen=True)
class Part:
    """A piece of the output one worker writes: the keys it computes and the tensors it stores.

    A shard of a model folder is the file `file_name` of the output's temporary folder. A range of a
    single file (`file_name` empty) is bytes ``[start, end)`` of the output's temporary file, written
    in place (:mod:`mecha_core.file_ranges`): its `entries` are the tensors overlapping it, each
    starting at file offset ``offsets[i]``, and the `returned` bytes before `start` (the tensor bytes
    sharing the header's pages, first range only) are computed too but returned to the driver, which
    writes them.
    """

    index: int
    file_name: str
    keys: tuple[str, ...]
    entries: tuple[Entry, ...]
    offsets: tuple[int, ...] = ()
    start: int = 0
    end: int = 0
    returned: int = 0


@dataclasses.dataclass(frozen=True)
class MergeJob:
    """A planned merge as plain data, for executors that run it elsewhere.

    `recipe` (and `fallback`) are ``.mecha`` text naming each model by its absolute path, or None when
    the recipe holds in-memory models (only the ``local`` executor runs those). `options` are the
    fields of :class:`~mecha_core.planning.MergeOptions` but the fallback model, the cache and the
    models folders (`layout` naming its model by absolute path, as the recipe text does). `parts` are
    the shards of a folder output, or one range for a whole single file (:func:`~mecha_core.executors.split`
    cuts it). `folder` is the temporary folder shards are written into, `metadata` each shard's;
    `file` is a single file's temporary file, created by the driver with its header and its full size.
    `key_of` maps an output tensor name to the plan key it comes from, where they differ (a respelled
    key, a save format storing one key as several tensors).
    """

    recipe: str | None
    fallback: str | None
    options: Mapping[str, Any]
    output: str | None
    folder: str | None
    metadata: Mapping[str, str]
    parts: tuple[Part, ...]
    executor_options: Mapping[str, Any]
    key_of: Mapping[str, str] = dataclasses.field(default_factory=dict)
    file: str | None = None
    plugins: tuple[str, ...] = ()  # the driver's plugins, which a worker loads too


@dataclasses.dataclass
class LiveMerge:
    """This process's side of a merge: the plan with its open models, where results go (under the
    output's spellings), the output and the progress callback."""

    plan: MergePlan
    sink: Sink
    output: OutputFile | OutputFolder | None
    progress: Progress | None


@dataclasses.dataclass(frozen=True)
class PartResult:
    """What a worker reports about the part it wrote: the shard's file, or the range's file, and the
    size and SHA-256 of the bytes it wrote there (as it read them back); a range's `returned` bytes."""

    index: int
    path: str
    size: int
    sha256: str
    notes: tuple[str, ...] = ()
    returned: bytes = b""


@dataclasses.dataclass(frozen=True)
class Executor:
    """A way to run a merge: ``run(job, live)`` writes every key of the plan into ``live.sink`` (or
    has parts written that it hands to :func:`~mecha_core.executors.assemble`); it returns once
    everything is written, raising on failure. `summary` is the line ``mecha plugins`` shows."""

    name: str
    summary: str
    run: Callable[[MergeJob, LiveMerge], None]

    def __post_init__(self) -> None:
        validate_name(self.name, "executor")
