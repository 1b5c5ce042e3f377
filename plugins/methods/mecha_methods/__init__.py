"""mecha-methods: the merge method library, registered through ``mecha_merge_methods()``."""

from __future__ import annotations

from mecha_core import MergeMethod, hookimpl

from . import linear


@hookimpl
def mecha_merge_methods() -> list[MergeMethod]:
    return [*linear.METHODS]
