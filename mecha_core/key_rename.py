"""Renaming the keys of one model input: ``model "a.safetensors" rename="model.layers.{8..15}.>model.layers.{0..7}."``.

Stacking layers of models into a deeper one (mergekit's ``passthrough`` slices) needs an input whose
layer 8 is read as the output's layer 0. A rename is a comma-separated list of rules, each a key
prefix: ``OLD>NEW`` reads the keys starting with OLD under NEW instead, a bare ``OLD`` keeps them as
they are, and every key that no rule matches is left out of that input. ``{a..b}`` expands to one
rule per integer, pairwise on both sides (``{8..15}`` with ``{0..7}``; the ranges must have the same
length). The longest matching prefix wins; two keys renamed to one name are refused.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from .errors import RecipeError
from .tensor_files import TensorInfo

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def parse_rules(text: str) -> list[tuple[str, str]]:
    """The (old prefix, new prefix) pairs of a rename, ranges expanded; a refusal names the bad rule."""
    rules: list[tuple[str, str]] = []
    for rule in (part.strip() for part in text.split(",")):
        if not rule:
            raise RecipeError(f"rename {text!r}: empty rule; rules are OLD>NEW or OLD, separated by commas")
        old, arrow, new = rule.partition(">")
        old, new = old.strip(), (new.strip() if arrow else old.strip())
        if not old or not new or ">" in new:
            raise RecipeError(f"rename rule {rule!r}: expected OLD>NEW or OLD (key prefixes)")
        olds, news = _expand(old, rule), _expand(new, rule)
        if len(olds) != len(news):
            raise RecipeError(f"rename rule {rule!r}: the ranges cover {len(olds)} and {len(news)} numbers; "
                              f"they must have the same length")
        rules.extend(zip(olds, news))
    return rules


def _expand(side: str, rule: str) -> list[str]:
    found = list(_RANGE.finditer(side))
    if not found:
        return [side]
    if len(found) > 1:
        raise RecipeError(f"rename rule {rule!r}: at most one {{a..b}} range on each side")
    start, stop = int(found[0].group(1)), int(found[0].group(2))
    if stop < start:
        raise RecipeError(f"rename rule {rule!r}: range {{{start}..{stop}}} counts down; write it low..high")
    head, tail = side[: found[0].start()], side[found[0].end():]
    return [f"{head}{i}{tail}" for i in range(start, stop + 1)]


def rename_map(names: Collection[str], text: str, label: str) -> dict[str, str]:
    """New name -> stored name for the keys `text` keeps out of `names`."""
    rules = sorted(parse_rules(text), key=lambda rule: len(rule[0]), reverse=True)
    renamed: dict[str, str] = {}
    for name in names:
        rule = next(((old, new) for old, new in rules if name.startswith(old)), None)
        if rule is None:
            continue
        target = rule[1] + name[len(rule[0]):]
        if target in renamed:
            raise RecipeError(f"{label}: rename {text!r} gives two keys the name {target!r} "
                              f"({renamed[target]!r} and {name!r})")
        renamed[target] = name
    if not renamed:
        raise RecipeError(f"{label}: rename {text!r} matches none of its keys")
    return renamed


def renamed_tensors(tensors: Mapping[str, TensorInfo], text: str, label: str) -> dict[str, TensorInfo]:
    """A file's tensor table under the renamed keys (for architectures derived from the keys)."""
    return {new: tensors[old] for new, old in rename_map(tensors, text, label).items()}


class RenamedKeySource:
    """A key source read under other names; what the rename leaves out it does not provide."""

    def __init__(self, source: Any, text: str) -> None:
        self.source = source
        self.label = source.label
        self.supports_ranges = getattr(source, "supports_ranges", False)
        self._names = rename_map(source.keys(), text, source.label)
        if hasattr(source, "add_flat"):
            self.add_flat = lambda key, *args, **kwargs: source.add_flat(self._names[key], *args, **kwargs)

    def keys(self) -> Collection[str]:
        return self._names.keys()

    def info(self, key: str) -> TensorInfo:
        return self.source.info(self._names[key])

    def read(self, key: str) -> Any:
        return self.source.read(self._names[key])

    def read_flat(self, key: str, start: int, stop: int) -> Any:
        return self.source.read_flat(self._names[key], start, stop)

    def close(self) -> None:
        self.source.close()
