"""An executor running every part of a merge in this process, one after the other: what a cluster's
executor does (split, run_parts, assemble), without the cluster. Used by the core's and the
architectures' tests to compare its bytes with the local executor's."""

from __future__ import annotations

import mecha_core as mc
from mecha_core import executors


class InProcessParts:
    """Registered as a plugin, provides the ``parts`` executor; remembers the jobs it saw."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.jobs: list[executors.MergeJob] = []

    @mc.hookimpl
    def mecha_executors(self):
        return [mc.Executor("parts", "every part in turn, in this process", self.run)]

    def run(self, job, live):
        self.jobs.append(job)
        parts = executors.split(job, self.count)
        executors.assemble(live, parts, [result for part in parts for result in executors.run_parts(job, [part])])
