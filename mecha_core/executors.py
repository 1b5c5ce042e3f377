"""Executors: what runs a merge's keys once it is planned, in this process (``local``) or elsewhere.

An executor is registered through the ``mecha_executors`` hook like any plugin's spec and is given
two things: a :class:`MergeJob`, small and picklable (the recipe as text with absolute model paths,
the merge options, and the output's parts: which keys, which tensors at which offsets; no tensor, no
open file), and a :class:`LiveMerge` holding this process's plan, sink and output.

The built-in ``local`` executor runs the live plan on a thread pool. An executor that spreads the
work over other processes or machines hands each of them some :class:`Part` s and calls
:func:`run_parts` there: it plans the recipe again (headers only), streams the parts' keys exactly
as the local executor does and reports the size and SHA-256 of what it wrote. A shard of a model
folder is a file of its own in the output's temporary folder. A single file is cut into byte
ranges at page boundaries (:mod:`mecha_core.file_ranges`), each written in place into the output's
temporary file by one worker, so that no page has two writers (shared file systems such as NFS may
lose such writes) and the driver never rewrites the output. Back in this process, :func:`assemble`
checks every part against its report, reading it back from storage, and puts it in the output (a
shard is adopted; a range is there already, and the bytes sharing the header's pages are written
by the driver). The output is then committed by the caller as after a local run.

A part gives the same bytes wherever it runs and however the keys are split: the work is
deterministic, and random methods seed each key from the seed and the key's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MechaError
from .executor_spec import Entry, Executor, LiveMerge, MergeJob, Part, PartResult
from .file_ranges import RangeWriter, cut, range_digest
from .output_file import OutputFile
from .scheduler import Sink

if TYPE_CHECKING:
    from .output_folder import OutputFolder
    from .planning import MergePlan
    from .plugins import Plugins
    from .recipe import RecipeNode

__all__ = ["Executor", "LiveMerge", "MergeJob", "Part", "PartResult", "assemble", "file_digest",
           "find_executor", "make_job", "run_parts", "split"]

# executor names a user may ask for before the plugin providing them is installed
KNOWN_EXECUTORS = {"ray": "mecha-ray"}


def find_executor(name: str, registry: Any) -> Executor:
    """The registered executor `name`; for a known one not installed, an error naming the package."""
    if name not in registry and name in KNOWN_EXECUTORS:
        raise MechaError(f"the {name!r} executor needs the {KNOWN_EXECUTORS[name]} plugin: "
                         f"pip install {KNOWN_EXECUTORS[name]}")
    executor: Executor = registry.get(name)
    return executor


def run_local(job: MergeJob, live: LiveMerge) -> None:
    """The ``local`` executor: the live plan on a pool of ``threads`` threads in this process."""
    from .scheduler import run_plan
    run_plan(live.plan, live.sink, threads=live.plan.options.threads, progress=live.progress)


LOCAL = Executor("local", "this process, on a pool of threads (--threads)", run_local)


# the job ------------------------------------------------------------------------------------------
def make_job(plan: MergePlan, output: OutputFile | OutputFolder | None, executor_options: Mapping[str, Any],
             recipe: RecipeNode) -> MergeJob:
    """The job of a planned merge of `recipe` writing into `output` (entered: a folder's temporary
    folder exists)."""
    from .output_folder import OutputFolder
    from .plugins import get_plugins
    options = {field.name: getattr(plan.options, field.name) for field in dataclasses.fields(plan.options)
               if field.name not in ("fallback_model", "cache", "models_dirs")}
    options["save_options"] = dict(options["save_options"])
    options["layout"] = _layout_path(plan)
    keys_of = _keys_of_tensors(plan)
    file = None
    if isinstance(output, OutputFolder):
        parts = tuple(Part(i, shard.file_name, _keys_for(shard.entries, keys_of), tuple(shard.entries))
                      for i, shard in enumerate(output.plan.shards))
        target, folder, metadata = str(output.path), str(output.temporary_folder), dict(output.metadata)
    elif output is not None:
        header = len(output.header)
        entries = tuple((name, dtype_name, shape) for name, dtype_name, shape, _, _ in output.layout)
        offsets = tuple(header + start for _, _, _, start, _ in output.layout)
        whole = Part(0, "", (), entries, offsets, header, output.total_size)
        parts = (_ranges(whole, header, 1, keys_of)[0],)
        target, folder, metadata = os.path.abspath(output.path), None, {}
        file = str(output.temporary_path)
    else:
        parts, target, folder, metadata = (), None, None, {}
    return MergeJob(recipe=_portable(recipe, plan), fallback=_portable_fallback(plan),
                    options=options, output=target, folder=folder, metadata=metadata, parts=parts,
                    executor_options=dict(executor_options),
                    key_of={name: key for name, key in keys_of.items() if name != key}, file=file,
                    plugins=tuple(name for name, record in get_plugins().records.items()
                                  if record.status.startswith("active") and name != "core"))


def _keys_of_tensors(plan: MergePlan) -> dict[str, str]:
    """The plan key each output tensor comes from: a key may be spelled another way in the output
    (``MergePlan.spellings``), and a save format may store one key as several tensors."""
    keys = {}
    for key in plan.keys:
        if plan.encoder is not None and key.merge:
            for name, _, _ in plan.encoder.layout(key.name, key.shape):
                keys[name] = key.name
        else:
            keys[plan.spellings.get(key.name, key.name)] = key.name
    return keys


def _keys_for(entries: Sequence[Entry], keys_of: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(keys_of[name] for name, _, _ in entries))


def _portable(recipe: RecipeNode, plan: MergePlan) -> str | None:
    """The recipe as text naming each model file by its absolute path (None for in-memory models)."""
    from .recipe import ModelNode, transform
    from .recipe_format import serialize
    paths = {id(leaf.node): leaf.path for leaf in plan.leaves if leaf.path is not None}

    def absolute(node: Any) -> Any:
        if isinstance(node, ModelNode) and id(node) in paths:
            return ModelNode(os.path.abspath(paths[id(node)]), node.arch, node.type, node.rename)
        return node

    try:
        return serialize(transform(recipe, absolute))
    except MechaError:
        return None


def _portable_fallback(plan: MergePlan) -> str | None:
    if plan.fallback is None or plan.fallback.path is None:
        return None
    from .recipe import ModelNode
    from .recipe_format import serialize
    node = plan.fallback.node
    return serialize(ModelNode(os.path.abspath(plan.fallback.path), node.arch, node.type, node.rename))


def _layout_path(plan: MergePlan) -> str | None:
    """The layout model by its absolute path, as the job's recipe names it (None: the first model)."""
    name = plan.options.layout
    if name is None:
        return None
    for leaf in plan.leaves + ([plan.fallback] if plan.fallback else []):
        if leaf.path is not None and name in (str(leaf.node.source), str(leaf.path), leaf.label):
            return os.path.abspath(leaf.path)
    return name


def split(job: MergeJob, count: int) -> list[Part]:
    """The parts to hand out: a folder's shards, or a single file cut into at most `count` byte
    ranges of about equal size, at page boundaries (:mod:`mecha_core.file_ranges`)."""
    if job.file is None:
        return list(job.parts)
    whole = job.parts[0]
    header = whole.start - whole.returned
    keys_of = {name: job.key_of.get(name, name) for name, _, _ in whole.entries}
    return _ranges(whole, header, count, keys_of)


def _ranges(whole: Part, header: int, count: int, keys_of: Mapping[str, str]) -> list[Part]:
    """`whole` (every tensor of a file whose header is `header` bytes) cut into ranges, each with the
    tensors overlapping it and their keys."""
    parts = []
    for index, (start, end) in enumerate(cut(header, whole.end, count)):
        low = header if index == 0 else start
        held = [i for i, entry in enumerate(whole.entries)
                if _overlaps(whole.offsets[i], _nbytes(entry), low, end, whole.end)]
        entries = tuple(whole.entries[i] for i in held)
        parts.append(Part(index, "", _keys_for(entries, keys_of), entries, tuple(whole.offsets[i] for i in held),
                          start, end, start - low))
    return parts


def _overlaps(offset: int, size: int, low: int, high: int, file_end: int) -> bool:
    """Whether a tensor at `offset` of `size` bytes has bytes in ``[low, high)`` (an empty one: lies
    there, or at the file's end for the last range)."""
    if size:
        return offset < high and offset + size > low
    return low <= offset < high or offset == high == file_end


def _nbytes(entry: Entry) -> int:
    from . import dtypes
    size = dtypes.itemsize(dtypes.code_of(entry[1]))
    for dim in entry[2]:
        size *= dim
    return size


# a worker's side ----------------------------------------------------------------------------------
def run_parts(job: MergeJob, parts: Sequence[Part], *, threads: int = 1) -> list[PartResult]:
    """Plan the job's recipe again, compute the keys of `parts` (in one pass, on one pool of `threads`)
    and write them: each shard as a complete safetensors file in the job's temporary folder (renamed
    into place when written), each range in place in the job's temporary file. Returns, per part,
    the size and SHA-256 of what it wrote, read back.

    Runs in any process that sees the models at the job's paths and the output's folder; run twice,
    it writes the same bytes (so a retried worker writes over its earlier attempt's with identical
    ones). Tensors are written under the names the driver planned (its spellings), and a worker
    whose plan names them otherwise (another version of mecha or of a plugin) refuses to write.
    """
    if job.recipe is None:
        raise MechaError("this executor runs recipes of model files only; the recipe holds in-memory models "
                         "(use the local executor)")
    from .planning import MergeOptions, plan_merge
    from .recipe_format import deserialize
    from .scheduler import RespelledSink, run_plan
    plugins = _plugins(job.plugins)
    options = MergeOptions(**{**job.options, "threads": threads},
                           fallback_model=deserialize(job.fallback, plugins=plugins) if job.fallback else None)
    plan = plan_merge(deserialize(job.recipe, plugins=plugins), options, plugins)
    try:
        by_name = {key.name: key for key in plan.keys}
        keys_of = _keys_of_tensors(plan)
        for part in parts:
            for name, _, _ in part.entries:
                if keys_of.get(name) != job.key_of.get(name, name) or keys_of[name] not in by_name:
                    raise MechaError(f"part {part.index + 1}: the recipe planned here does not write {name!r} as "
                                     f"the driver does; do the workers run the same mecha and plugins, and see the "
                                     f"same models, as the driver?")
        plan.keys = [by_name[name] for name in dict.fromkeys(key for part in parts for key in part.keys)]
        with contextlib.ExitStack() as stack:
            if job.file is not None:
                writers = [stack.enter_context(contextlib.closing(RangeWriter(job.file, part))) for part in parts]
                run_plan(plan, RespelledSink(_Fanout(writers), plan.spellings), threads=threads)
                plan.check_inputs_unchanged()
                return [PartResult(part.index, job.file, *writer.finish(), tuple(plan.notes), bytes(writer.head))
                        for part, writer in zip(parts, writers)]
            assert job.folder is not None
            # through the page cache: each shard is read back next, from memory
            shards = [stack.enter_context(OutputFile(Path(job.folder) / part.file_name, part.entries, job.metadata,
                                                     inputs=plan.input_paths(), part=True, direct=False))
                      for part in parts]
            run_plan(plan, RespelledSink(_Fanout(shards), plan.spellings), threads=threads)
            plan.check_inputs_unchanged()
            paths = [shard.commit() for shard in shards]
        return [PartResult(part.index, str(path), *file_digest(path), tuple(plan.notes))
                for part, path in zip(parts, paths)]
    finally:
        plan.close()


class _Fanout(Sink):
    """Each tensor to the shard holding it, or to every range (each writes its own clip of it)."""

    def __init__(self, outputs: Sequence[OutputFile | RangeWriter]) -> None:
        self.ranges = [out for out in outputs if isinstance(out, RangeWriter)]
        self.shards = {name: out for out in outputs if isinstance(out, OutputFile) for name in out.offsets}

    def write(self, name: str, tensor: Any, start_element: int = 0) -> None:
        shard = self.shards.get(name)
        if shard is not None:
            shard.write(name, tensor, start_element)
        for writer in self.ranges:
            writer.write(name, tensor, start_element)


def _plugins(names: tuple[str, ...]) -> Plugins:
    """The plugin set in use when it holds the driver's plugins (a worker in the driver's process, or
    one that loads every installed plugin), else those plugins loaded by name (once per process)."""
    from .plugins import get_plugins
    plugins = get_plugins()
    if all(name in plugins.records for name in names):
        return plugins
    return _load(names)


@functools.cache
def _load(names: tuple[str, ...]) -> Plugins:
    from .plugins import load_plugins
    return load_plugins(allow=names)


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """A file's size and digest (:func:`~mecha_core.file_ranges.range_digest` of all of it: the SHA-256
    of its blocks' SHA-256s, hex)."""
    size = os.path.getsize(path)
    return size, range_digest(str(path), 0, size)


# the driver's side --------------------------------------------------------------------------------
def assemble(live: LiveMerge, parts: Sequence[Part], results: Sequence[PartResult]) -> None:
    """Check every part against its worker's report, reading it back from storage, then put it in the
    live output: a shard is adopted where it lies; a range is in place already, and the bytes it
    returned (sharing the header's pages) are written here. Nothing is committed here; any mismatch
    raises and the caller's output is aborted."""
    from .output_folder import OutputFolder
    by_index = {result.index: result for result in results}
    for part in parts:
        if part.index not in by_index:
            raise MechaError(f"part {part.index + 1} of {len(parts)} was not written")
    output = live.output
    file = str(output.temporary_path) if isinstance(output, OutputFile) else None
    for part in parts:
        result = by_index[part.index]
        size, digest = _stored(part, file or result.path)
        if (size, digest) != (result.size, result.sha256):
            where = f"bytes {part.start}..{part.end} of {file}" if file else result.path
            raise MechaError(f"part {part.index + 1} ({where}): {size} bytes with SHA-256 "
                             f"{digest[:12]}..., but its worker wrote {result.size} bytes with SHA-256 "
                             f"{result.sha256[:12]}...; is the shared storage consistent on every node?")
        if len(result.returned) != part.returned:
            raise MechaError(f"part {part.index + 1} returned {len(result.returned)} bytes, expected {part.returned}")
        for note in result.notes:
            if note not in live.plan.notes:
                live.plan.notes.append(note)
    if isinstance(output, OutputFolder):
        output.adopt_shards([by_index[part.index].path for part in parts])
        return
    assert isinstance(output, OutputFile)
    for part in parts:
        if part.returned:
            output.write_bytes(by_index[part.index].returned, part.start - part.returned)


def _stored(part: Part, path: str) -> tuple[int, str]:
    """The size and SHA-256 of what storage holds of `part`: the shard file at `path`, or its range of
    the output's temporary file at `path`."""
    if part.file_name:
        return file_digest(path)
    return part.end - part.start, range_digest(path, part.start, part.end)
