"""The one graph walk of mecha: every distinct node of a DAG, each after the nodes it depends on.

Recipes and the merge plans bound from them share sub-trees (a model used by several calls, a
sub-recipe used twice) and may be thousands of calls deep, so every walk over them is this one:
iterative (no recursion limit), visiting each node once by identity (a shared sub-tree is not walked
again), and yielding a node only after all of its children, in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def post_order(root: T, children: Callable[[T], Sequence[T]],
               skip: Callable[[T], bool] | None = None) -> Iterator[T]:
    """Every distinct node reachable from `root` (by identity), children before parents, first
    child first. `children(node)` is called once per node, when the walk enters it. A node for
    which ``skip(node)`` is true is neither yielded nor entered (nor are its children through it).

    Lazy: nodes are yielded as they are reached, so a caller may stop early, or act on a node (fill
    a memo that `skip` reads) before the walk goes on."""
    entered: set[int] = set()
    stack: list[tuple[T, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            yield node
            continue
        if id(node) in entered or (skip is not None and skip(node)):
            continue
        entered.add(id(node))
        stack.append((node, True))
        for child in reversed(children(node)):
            if id(child) not in entered:
                stack.append((child, False))
