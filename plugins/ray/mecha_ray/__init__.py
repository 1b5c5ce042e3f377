"""mecha-ray: the ``ray`` executor, which runs a merge's parts as tasks on a Ray cluster.

Imports cheaply: ray is imported when a merge runs on it.
"""

from __future__ import annotations

from mecha_core import Executor, hookimpl


@hookimpl
def mecha_executors() -> list[Executor]:
    from .executor import run_on_ray
    return [Executor("ray", "a Ray cluster: parts of the output as tasks (--ray-address)", run_on_ray)]
