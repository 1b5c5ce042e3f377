"""mergekit parameter values per tensor, and the mecha block/class dict that gives the same values.

A mergekit setting is a value, a gradient (anchors interpolated linearly over the layers of a slice:
layer i of n at t = i / (n - 1), a one-layer slice at t = 1, keys outside the layers at t = 0), or a
list of ``{filter, value}`` whose first entry whose filter is part of the tensor's name applies
(no filter, or ``*``, matches every tensor). Settings are looked up from the most specific source
(the model's own parameters, then the slice's, then the configuration's), the first one giving a
value winning.

mecha gives a value per key from a dict by component, block and class. :func:`encode` builds the
dict: a class value where every key of the class has one value, else a block value where every key
of the block left has one, else a block-and-class value, and checks that every key resolves to its
mergekit value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from mecha_core import KeySpec, MechaError

Setting = Any
Lookup = Callable[[str, float], Any]


def evaluate(setting: Setting, tensor: str, t: float) -> Any:
    """mergekit's value of a setting for a tensor at position t of its slice; None when no filter matches."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float)):
        return setting
    if all(isinstance(item, dict) for item in setting):
        for item in setting:
            selector = item.get("filter")
            if selector is None or selector == "*" or (tensor and selector in tensor):
                return evaluate(item["value"], tensor, t)
        return None
    scaled = t * (len(setting) - 1)
    low = int(scaled)
    high = min(len(setting) - 1, low + 1)
    fraction = scaled - low
    return (1 - fraction) * setting[low] + fraction * setting[high]


def lookup(name: str, scopes: Sequence[Mapping[str, Setting]], default: Any) -> Lookup:
    """A parameter's value for (tensor, t): the first scope with a value for it, else `default`."""
    def value(tensor: str, t: float) -> Any:
        for scope in scopes:
            if name in scope:
                found = evaluate(scope[name], tensor, t)
                if found is not None:
                    return found
        return default
    return value


def encode(values: Mapping[str, float], specs: Mapping[str, KeySpec], prefix_of: Callable[[KeySpec], str],
           what: str) -> float | dict[str, float]:
    """A number when every key has the same value, else the smallest dict of mecha block/class values
    reproducing `values` (key -> value) for these key specs."""
    distinct = set(values.values())
    if len(distinct) == 1:
        return distinct.pop()
    entries: dict[str, float] = {}
    by_component: dict[str, list[str]] = {}
    for key in values:
        by_component.setdefault(prefix_of(specs[key]), []).append(key)
    for prefix, keys in by_component.items():
        entries.update(_encode_component(prefix, keys, values, specs))
    wrong = [k for k in values if abs(resolve(entries, specs[k], prefix_of(specs[k])) - values[k]) > 1e-12]
    if wrong:
        raise MechaError(f"{what}: its values per tensor cannot be given as mecha block/class values "
                         f"(e.g. {wrong[0]!r}); simplify the filters")
    return entries


def _encode_component(prefix: str, keys: list[str], values: Mapping[str, float],
                      specs: Mapping[str, KeySpec]) -> dict[str, float]:
    if len({values[k] for k in keys}) == 1:
        return {f"{prefix}_default": values[keys[0]]}
    entries: dict[str, float] = {}
    blockless = [k for k in keys if not specs[k].blocks]
    if len({values[k] for k in blockless}) == 1:
        entries[f"{prefix}_default"] = values[blockless[0]]
    else:
        entries.update((f"{prefix}_class_{specs[k].class_}", values[k]) for k in blockless)
    left = []
    for class_, members in _groups([k for k in keys if specs[k].blocks], lambda k: specs[k].class_).items():
        if class_ is not None and len({values[k] for k in members}) == 1:
            entries[f"{prefix}_class_{class_}"] = values[members[0]]
        else:
            left.extend(members)
    for block, members in _groups([k for k in left if specs[k].blocks], lambda k: specs[k].blocks[0]).items():
        if len({values[k] for k in members}) == 1:
            entries[f"{prefix}_block_{block}"] = values[members[0]]
        else:
            for key in members:
                entries[f"{prefix}_block_{block}_class_{specs[key].class_}"] = values[key]
    return entries


def _groups(keys: Iterable[str], by: Callable[[str], Any]) -> dict[Any, list[str]]:
    groups: dict[Any, list[str]] = {}
    for key in keys:
        groups.setdefault(by(key), []).append(key)
    return groups


def resolve(entries: Mapping[str, float], spec: KeySpec, prefix: str) -> float:
    """The value mecha takes for a key from a dict (the core's documented precedence)."""
    if spec.class_ is not None:
        both = [entries[k] for k in (f"{prefix}_block_{b}_class_{spec.class_}" for b in spec.blocks) if k in entries]
        if both:
            return sum(both) / len(both)
        if f"{prefix}_class_{spec.class_}" in entries:
            return entries[f"{prefix}_class_{spec.class_}"]
    by_block = [entries[k] for k in (f"{prefix}_block_{b}" for b in spec.blocks) if k in entries]
    if by_block:
        return sum(by_block) / len(by_block)
    return entries.get(f"{prefix}_default", 0)
