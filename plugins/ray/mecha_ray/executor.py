"""The ``ray`` executor: a merge's parts as Ray tasks, checked and committed by the driver.

The output is cut into parts (:func:`mecha_core.executors.split`): a model folder's shards, or a
single file's byte ranges, cut at page boundaries. One task per node of the cluster, on all its
CPUs, takes a range, or a group of shards of about equal size; it plans the recipe again from its
text (headers only) and writes its parts in one pass (:func:`mecha_core.executors.run_parts`) on
storage every node sees: a shard as a file of its own in the output's temporary folder, a range in
place in the output's temporary file, which the driver created with its header and full size.
Every page of that file has one writer (the header's are the driver's), so NFS and similar file
systems, which may lose two clients' writes into one page, are safe, and the driver never rewrites
the output: it reads it once, to check it.

A task whose worker or node dies is retried (``max_retries``): the work is deterministic, so the
retry writes the same bytes over what the dead attempt left. A task that raises fails for good: the
merge stops with its error, the other tasks are cancelled and nothing is committed, as on Ctrl-C.
The driver checks every part's size and SHA-256, read back from storage, against its task's report
before committing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mecha_core import MechaError, executors
from mecha_core.executors import LiveMerge, MergeJob, Part, PartResult

DEFAULT_RETRIES = 3
CANCEL_WAIT_S = 10
# tests: a file path; the first attempt of part 1 that finds it absent creates it, then its worker
# exits after writing the part and before reporting (a worker dying mid-task)
EXIT_ONCE_ENV = "MECHA_RAY_TEST_EXIT_ONCE"
OPTIONS = ("address", "max_retries", "parts", "task_cpus")


def run_on_ray(job: MergeJob, live: LiveMerge) -> None:
    """Run `job` on the Ray cluster at ``executor_options["address"]`` (else ``RAY_ADDRESS``, else the
    one this process already joined, else a new one on this machine)."""
    if job.output is None:
        raise MechaError("the ray executor writes a file or a model folder; give an output")
    if job.recipe is None:
        raise MechaError("the ray executor needs a recipe of model files that every node can read; this one "
                         "holds in-memory models (use the local executor)")
    unknown = sorted(set(job.executor_options) - set(OPTIONS))
    if unknown:
        raise MechaError(f"unknown option {unknown[0]!r} of the ray executor; it takes {', '.join(OPTIONS)}")
    try:
        import ray
    except ImportError as error:
        raise MechaError(f"the ray executor cannot import ray ({error}); pip install mecha-ray") from None
    options = job.executor_options
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=options.get("address"), include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise MechaError(f"cannot join the Ray cluster at {options.get('address')!r}: {error}") from None
        started = True
    try:
        count, cpus = _shape(ray, options)
        _run(ray, job, live, executors.split(job, count), count, cpus)
    finally:
        if started:
            ray.shutdown()


def _shape(ray: Any, options: Mapping[str, Any]) -> tuple[int, int]:
    """How many tasks (a single file's ranges; groups of a folder's shards), and the CPUs (threads) of
    each: by default a task fills a node (the smallest node's CPUs), one per node, so that each node
    imports torch and plans the merge once, and its threads share one pool and one page cache, as a
    local merge's do."""
    nodes = [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
    nodes = [cpus for cpus in nodes if cpus >= 1] or [1]
    cpus = int(options.get("task_cpus") or min(nodes))
    return int(options.get("parts") or max(1, sum(node // cpus for node in nodes))), cpus


def _run(ray: Any, job: MergeJob, live: LiveMerge, parts: Sequence[Part], count: int, cpus: int) -> None:
    """`parts` as `count` tasks (a folder's shards in groups of about equal size, computed in one pass
    each); progress as tasks finish; every part checked and put in the output, or nothing."""
    retries = int(job.executor_options.get("max_retries", DEFAULT_RETRIES))
    task = ray.remote(_task).options(max_retries=retries, retry_exceptions=False, num_cpus=cpus)
    job_ref = ray.put(job)
    exit_once = os.environ.get(EXIT_ONCE_ENV)
    refs = {task.remote(job_ref, group, cpus, exit_once): group for group in _groups(job, parts, count)}
    keys = {key.name: key for key in live.plan.keys}
    results: list[PartResult] = []
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                group = refs[ref]
                results.extend(_results(ray, ref, group, len(parts), retries))
                if live.progress is not None:
                    for part in group:
                        for name, written in _bytes_per_key(job, part).items():
                            live.progress(keys[name], written)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        # their workers are being killed: give them a moment to stop, so that none still holds the
        # output's temporary file open when the caller removes it (NFS keeps such a file as .nfs*)
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)
        raise
    executors.assemble(live, parts, results)


def _groups(job: MergeJob, parts: Sequence[Part], count: int) -> list[list[Part]]:
    """At most `count` groups of parts, of about equal bytes (the largest part first to the lightest
    group), each in the output's order."""
    sizes = {part.index: sum(_bytes_per_key(job, part).values()) for part in parts}
    groups: list[list[Part]] = [[] for _ in range(min(count, len(parts)))]
    for part in sorted(parts, key=lambda part: -sizes[part.index]):
        min(groups, key=lambda group: sum(sizes[member.index] for member in group)).append(part)
    return [sorted(group, key=lambda part: part.index) for group in groups]


def _results(ray: Any, ref: Any, group: Sequence[Part], count: int, retries: int) -> list[PartResult]:
    numbers = "part " + ", ".join(str(part.index + 1) for part in group) + f" of {count}"
    try:
        results: list[PartResult] = ray.get(ref)
        return results
    except ray.exceptions.RayTaskError as error:
        cause = error.cause
        if isinstance(cause, MechaError):
            raise type(cause)(f"{numbers}: {cause}") from None
        raise MechaError(f"{numbers} failed: {type(cause).__name__}: {cause}") from None
    except ray.exceptions.RayError as error:  # its worker or node died on every attempt
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MechaError(f"{numbers} failed {retries + 1} times: {first}") from None


def _bytes_per_key(job: MergeJob, part: Part) -> dict[str, int]:
    """The bytes of each key `part` writes: of a tensor straddling a cut, only its side."""
    from mecha_core import dtypes
    low = part.start - part.returned
    written: dict[str, int] = {}
    for i, (name, dtype_name, shape) in enumerate(part.entries):
        size = dtypes.itemsize(dtypes.code_of(dtype_name))
        for dim in shape:
            size *= dim
        if part.offsets:
            size = max(0, min(part.offsets[i] + size, part.end) - max(part.offsets[i], low))
        key = job.key_of.get(name, name)
        written[key] = written.get(key, 0) + size
    return written


def _task(job: MergeJob, group: list[Part], cpus: int, exit_once: str | None) -> list[PartResult]:
    results = executors.run_parts(job, group, threads=cpus)
    if exit_once and group[0].index == 0:
        try:
            os.close(os.open(exit_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os._exit(1)
    return results
