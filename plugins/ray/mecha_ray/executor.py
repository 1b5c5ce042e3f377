"""The ``ray`` executor: a merge's parts as Ray tasks, joined and committed by the driver.

The output is cut into parts (:func:`mecha_core.executors.split`): a model folder's shards, or a
single file's tensors in contiguous byte ranges, one part per CPU of the cluster. Each part is a
task that plans the recipe again from its text (headers only) and writes its part as a file of its
own (:func:`mecha_core.executors.run_part`) on storage every node sees: a shard in the output's
temporary folder, a part of a single file in a parts folder beside the output (named for this
process, so that the next write there removes it should this process be killed). No two nodes ever
write one file, so NFS and similar file systems, which lose concurrent writes to one page, are safe;
the price for a single file is one copy of its bytes on the driver (``copy_file_range``: in the
kernel, or on the file server for NFS 4.2), which page-aligned ranges of one file would avoid but
only where the file system keeps the writes of several clients apart.

A task whose worker or node dies is retried (``max_retries``): the work is deterministic, so the
retry writes the same bytes over what the dead attempt left. A task that raises fails for good: the
merge stops with its error, the other tasks are cancelled and nothing is committed, as on Ctrl-C.
The driver checks every part's size and SHA-256 against its task's report before committing.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
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
        count = int(options.get("parts") or max(1, int(ray.cluster_resources().get("CPU", 1))))
        parts = executors.split(job, count)
        if job.folder is not None:
            _run(ray, job, live, parts, job.folder)
            return
        folder = executors.make_parts_folder(job.output)  # removed by a later write there if this process is killed
        try:
            _run(ray, job, live, parts, str(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if started:
            ray.shutdown()


def _run(ray: Any, job: MergeJob, live: LiveMerge, parts: Sequence[Part], folder: str) -> None:
    """One task per part; progress as parts finish; every part verified and joined, or nothing."""
    retries = int(job.executor_options.get("max_retries", DEFAULT_RETRIES))
    cpus = int(job.executor_options.get("task_cpus", 1))
    task = ray.remote(_task).options(max_retries=retries, retry_exceptions=False, num_cpus=cpus)
    job_ref = ray.put(job)
    exit_once = os.environ.get(EXIT_ONCE_ENV)
    refs = {task.remote(job_ref, part, folder, cpus, exit_once): part for part in parts}
    keys = {key.name: key for key in live.plan.keys}
    results: list[PartResult] = []
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                part = refs[ref]
                results.append(_result(ray, ref, part, len(parts), retries))
                if live.progress is not None:
                    for name, written in _bytes_per_key(job, part).items():
                        live.progress(keys[name], written)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        # their workers are being killed: give them a moment to stop, so that no write lands in the
        # parts folder after the caller removed it
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)
        raise
    executors.assemble(live, parts, results)


def _result(ray: Any, ref: Any, part: Part, count: int, retries: int) -> PartResult:
    try:
        result: PartResult = ray.get(ref)
        return result
    except ray.exceptions.RayTaskError as error:
        cause = error.cause
        if isinstance(cause, MechaError):
            raise type(cause)(f"part {part.index + 1} of {count}: {cause}") from None
        raise MechaError(f"part {part.index + 1} of {count} failed: {type(cause).__name__}: {cause}") from None
    except ray.exceptions.RayError as error:  # its worker or node died on every attempt
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MechaError(f"part {part.index + 1} of {count} failed {retries + 1} times: {first}") from None


def _bytes_per_key(job: MergeJob, part: Part) -> dict[str, int]:
    from mecha_core import dtypes
    written: dict[str, int] = {}
    for name, dtype_name, shape in part.entries:
        size = dtypes.itemsize(dtypes.code_of(dtype_name))
        for dim in shape:
            size *= dim
        key = job.key_of.get(name, name)
        written[key] = written.get(key, 0) + size
    return written


def _task(job: MergeJob, part: Part, folder: str, cpus: int, exit_once: str | None) -> PartResult:
    result = executors.run_part(job, part, folder, threads=cpus)
    if exit_once and part.index == 0:
        try:
            os.close(os.open(exit_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os._exit(1)
    return result
