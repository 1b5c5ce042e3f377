"""Executors: what runs a merge's keys once it is planned, in this process (``local``) or elsewhere.

An executor is registered through the ``mecha_executors`` hook like any plugin's spec and is given
two things: a :class:`MergeJob`, small and picklable (the recipe as text with absolute model paths,
the merge options, and the output's parts: which keys, which tensors at which offsets; no tensor, no
open file), and a :class:`LiveMerge` holding this process's plan, sink and output.

The built-in ``local`` executor runs the live plan on a thread pool. An executor that spreads the
work over other processes or machines hands each of them a :class:`Part` and calls
:func:`run_part` there: it plans the recipe again (headers only), streams the part's keys exactly as
the local executor does into a file of its own, and reports the file's size and SHA-256. Back in
this process, :func:`assemble` checks every part against its report and puts them in the output:
a shard of a model folder is written in the output's temporary folder and adopted as it is; a part
of a single file is a separate file whose data is copied into the output's temporary file (never
one file written by two machines: shared file systems such as NFS lose such writes). The output is
then committed by the caller as after a local run.

A part gives the same bytes wherever it runs and however the keys are split: the work is
deterministic, and random methods seed each key from the seed and the key's name.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MechaError
from .executor_spec import Entry, Executor, LiveMerge, MergeJob, Part, PartResult
from .output_file import OutputFile, make_parts_folder

if TYPE_CHECKING:
    from .output_folder import OutputFolder
    from .planning import MergePlan
    from .plugins import Plugins
    from .recipe import RecipeNode

__all__ = ["Executor", "LiveMerge", "MergeJob", "Part", "PartResult", "assemble", "file_digest", "find_executor",
           "make_job", "make_parts_folder", "run_part", "split"]

READ_BLOCK = 8 << 20


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
    if isinstance(output, OutputFolder):
        parts = tuple(Part(i, shard.file_name, _keys_for(shard.entries, keys_of), tuple(shard.entries), 0,
                           shard.data_size) for i, shard in enumerate(output.plan.shards))
        target, folder, metadata = str(output.path), str(output.temporary_folder), dict(output.metadata)
    elif output is not None:
        entries = tuple((name, dtype_name, shape) for name, dtype_name, shape, _, _ in output.layout)
        size = output.layout[-1][4] if output.layout else 0
        parts = (Part(0, "part-00001.safetensors", _keys_for(entries, keys_of), entries, 0, size),)
        target, folder, metadata = os.path.abspath(output.path), None, {}
    else:
        parts, target, folder, metadata = (), None, None, {}
    return MergeJob(recipe=_portable(recipe, plan), fallback=_portable_fallback(plan),
                    options=options, output=target, folder=folder, metadata=metadata, parts=parts,
                    executor_options=dict(executor_options),
                    key_of={name: key for name, key in keys_of.items() if name != key},
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
    """The parts to hand out: a folder's shards, or a single file cut into at most `count` parts of
    contiguous tensors (by bytes), each written as a file of its own."""
    if job.folder is not None or len(job.parts) != 1:
        return list(job.parts)
    whole = job.parts[0]
    sizes = [_nbytes(entry) for entry in whole.entries]
    target = max(1, -(-sum(sizes) // max(1, count)))
    groups: list[list[int]] = [[]]
    filled = 0
    for i, size in enumerate(sizes):
        if groups[-1] and filled + size > target and len(groups) < count:
            groups.append([])
            filled = 0
        groups[-1].append(i)
        filled += size
    parts, start = [], whole.data_start
    for number, group in enumerate(groups):
        entries = tuple(whole.entries[i] for i in group)
        size = sum(sizes[i] for i in group)
        keys = tuple(dict.fromkeys(job.key_of.get(name, name) for name, _, _ in entries))
        parts.append(Part(number, f"part-{number + 1:05d}.safetensors", keys, entries, start, size))
        start += size
    return parts


def _nbytes(entry: Entry) -> int:
    from . import dtypes
    size = dtypes.itemsize(dtypes.code_of(entry[1]))
    for dim in entry[2]:
        size *= dim
    return size


# a worker's side ----------------------------------------------------------------------------------
def run_part(job: MergeJob, part: Part, folder: str, *, threads: int = 1) -> PartResult:
    """Plan the job's recipe again, compute `part`'s keys and write them to ``folder/part.file_name``
    (a complete safetensors file, renamed into place when written); returns its size and checksum.

    Runs in any process that sees the models at the job's paths and `folder`; run twice, it writes
    the same bytes (so a retried worker replaces its earlier attempt's file with an identical one).
    Tensors are written under the names the driver planned (its spellings), and a worker whose plan
    names them otherwise (another version of mecha or of a plugin) refuses to write.
    """
    if job.recipe is None:
        raise MechaError("this executor runs recipes of model files only; the recipe holds in-memory models "
                         "(use the local executor)")
    from .planning import MergeOptions, plan_merge
    from .recipe_format import deserialize
    from .scheduler import RespelledSink, Sink, run_plan
    plugins = _plugins(job.plugins)
    options = MergeOptions(**{**job.options, "threads": threads},
                           fallback_model=deserialize(job.fallback, plugins=plugins) if job.fallback else None)
    plan = plan_merge(deserialize(job.recipe, plugins=plugins), options, plugins)
    try:
        by_name = {key.name: key for key in plan.keys}
        keys_of = _keys_of_tensors(plan)
        for name, _, _ in part.entries:
            if keys_of.get(name) != job.key_of.get(name, name) or keys_of[name] not in by_name:
                raise MechaError(f"part {part.index + 1}: the recipe planned here does not write {name!r} as the "
                                 f"driver does; do the workers run the same mecha and plugins, and see the same "
                                 f"models, as the driver?")
        plan.keys = [by_name[name] for name in part.keys]
        wanted = {name for name, _, _ in part.entries}
        path = Path(folder) / part.file_name
        with OutputFile(path, part.entries, job.metadata, inputs=plan.input_paths(), part=True) as out:

            class PartSink(Sink):
                def write(self, name: str, tensor: Any, start_element: int = 0) -> None:
                    if name in wanted:  # a key's other tensors may belong to the next part
                        out.write(name, tensor, start_element)

            run_plan(plan, RespelledSink(PartSink(), plan.spellings), threads=threads)
            plan.check_inputs_unchanged()
            out.commit()
        size, digest = file_digest(path)
        return PartResult(part.index, str(path), size, digest, tuple(plan.notes))
    finally:
        plan.close()


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
    """A file's size and SHA-256 (hex)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


# the driver's side --------------------------------------------------------------------------------
def assemble(live: LiveMerge, parts: Sequence[Part], results: Sequence[PartResult]) -> None:
    """Check every part against its worker's report, then put it in the live output: a shard is
    adopted where it lies, a part of a single file is copied into the output's temporary file.
    Nothing is committed here; any mismatch raises and the caller's output is aborted."""
    from .output_folder import OutputFolder
    by_index = {result.index: result for result in results}
    for part in parts:
        result = by_index.get(part.index)
        if result is None:
            raise MechaError(f"part {part.index + 1} of {len(parts)} was not written")
        size, digest = file_digest(result.path)
        if (size, digest) != (result.size, result.sha256):
            raise MechaError(f"part {part.index + 1} ({result.path}): {size} bytes with SHA-256 {digest[:12]}..., "
                             f"but its worker wrote {result.size} bytes with SHA-256 {result.sha256[:12]}...; "
                             f"is the shared storage consistent on every node?")
        for note in result.notes:
            if note not in live.plan.notes:
                live.plan.notes.append(note)
    output = live.output
    if isinstance(output, OutputFolder):
        output.adopt_shards([by_index[part.index].path for part in parts])
        return
    assert output is not None
    for part in parts:
        path = by_index[part.index].path
        with open(path, "rb") as handle:
            header = int.from_bytes(handle.read(8), "little") + 8
        if os.path.getsize(path) - header != part.data_size:
            raise MechaError(f"part {part.index + 1} ({path}) holds {os.path.getsize(path) - header} bytes of "
                             f"tensors, expected {part.data_size}")
        output.copy_data_from(path, header, part.data_start, part.data_size)
