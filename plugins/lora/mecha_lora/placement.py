"""Placing a LoRA file's modules on an architecture's keys, and the architecture a LoRA is for.

Detection reads only the header: a LoRA is for the architecture whose LoRA names hold all of its
modules (when several do, the one whose layer shapes also fit). A tensor that cannot be placed is an
error naming it, never skipped: a LoRA applied in part is a different LoRA.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mecha_core import Architecture, MechaError, TensorFile, TensorInfo

from .algorithms import check
from .lora_file import UNSUPPORTED_MARKERS, UNSUPPORTED_NOTE, Grouped, Module, group, is_lora
from .naming import LoraNames, Target, conventions, lora_names

SHOWN = 10  # names listed in an error message


def detect(file: TensorFile, architectures: Mapping[str, Architecture]) -> str | None:
    """The name of the architecture a LoRA file is for; None when the file is not a LoRA."""
    if not is_lora(file.tensors):
        return None
    grouped = group(file.tensors)
    scored = []
    for architecture in architectures.values():
        names = lora_names(architecture)
        if names is not None:
            placed = [m for m in grouped.modules if m in names.targets]
            scored.append((len(placed), _shape_fits(file.tensors, grouped, names, architecture), names))
    best = max(((placed, fits) for placed, fits, _ in scored), default=(0, 0))
    if best[0] == 0:
        known = ", ".join(sorted(architectures)) or "none installed"
        unsupported = f" ({UNSUPPORTED_NOTE})" if _unsupported(grouped.strays) else ""
        raise MechaError(f"{file.label}: looks like a LoRA, but none of its {len(grouped.modules)} modules is a "
                         f"layer of a known architecture ({known}); first: "
                         f"{_shown(sorted(grouped.modules) or sorted(grouped.strays))}{unsupported}")
    winners = [names for placed, fits, names in scored if (placed, fits) == best]
    if len(winners) > 1:
        found = ", ".join(sorted(n.architecture for n in winners))
        raise MechaError(f"{file.label}: a LoRA whose layers fit several architectures ({found}); say which: "
                         f'model("{file.label}", type="lora", arch="...") or model "..." type="lora" arch="..."')
    unplaced(file.label, grouped, winners[0])
    one_convention(file.label, grouped)
    return winners[0].architecture


def _shape_fits(tensors: Mapping[str, TensorInfo], grouped: Grouped, names: LoraNames,
                architecture: Architecture) -> int:
    """How many placed modules have the shape of their layer in the architecture's (real-size) layout."""
    fits = 0
    shapes = {name: tuple(info.shape) for name, info in tensors.items()}
    for module in grouped.modules.values():
        target = names.targets.get(module.name)
        if target is None:
            continue
        try:
            found = check(module, shapes, lambda: None)
        except MechaError:
            continue
        spec = architecture.key_specs[target.key].shape
        if (found.rows, found.columns) == (target.rows or spec[0], math.prod(spec[1:])):
            fits += 1
    return fits


def unplaced(label: str, grouped: Grouped, names: LoraNames) -> None:
    """Raise naming every module of the file without a layer in `names`, and every tensor that is no
    part of a module."""
    missing = sorted(name for name in grouped.modules if name not in names.targets)
    if not missing and not grouped.strays:
        return
    placed = len(grouped.modules) - len(missing)
    listed = [f"module {name}" for name in missing] + [f"tensor {name}" for name in sorted(grouped.strays)]
    nearest = names.nearest(missing[0]) if missing else None
    hint = f"; the nearest layer name to {missing[0]!r} is {nearest!r}" if nearest else ""
    if _unsupported(grouped.strays):
        hint += f" ({UNSUPPORTED_NOTE})"
    raise MechaError(f"{label}: a LoRA for {names.architecture} ({placed} of {len(grouped.modules)} modules placed), "
                     f"but these fit no layer of {names.architecture}: {_shown(listed)}{hint}")


def one_convention(label: str, grouped: Grouped) -> None:
    """Raise when the file names its modules in several conventions (kohya's and PEFT's...): no trainer
    writes such a file, and two modules may then stand for one layer."""
    found = conventions(grouped.modules)
    if len(found) > 1:
        listed = "; ".join(f"{name}: {_shown(modules[:3])}" + (f" ({len(modules)} in all)" if len(modules) > 3 else "")
                           for name, modules in found.items())
        raise MechaError(f"{label}: a LoRA whose modules are named in several conventions ({listed}); a LoRA file "
                         f"holds one naming, so this one was put together from several files")


def _unsupported(tensors: list[str]) -> bool:
    return any(marker in tensor for tensor in tensors for marker in UNSUPPORTED_MARKERS)


def _shown(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > SHOWN else "")


def place(file: TensorFile, architecture: Architecture) -> dict[str, list[tuple[Module, Target]]]:
    """Checkpoint key -> the modules whose deltas make it up, refusing any tensor that has no place."""
    names = lora_names(architecture)
    if names is None:
        raise MechaError(f"{file.label}: architecture {architecture.name!r} has no layer a LoRA can target")
    grouped = group(file.tensors)
    unplaced(file.label, grouped, names)
    one_convention(file.label, grouped)
    pieces: dict[str, list[tuple[Module, Target]]] = {}
    for name, module in grouped.modules.items():
        target = names.targets[name]
        pieces.setdefault(target.key, []).append((module, target))
    return pieces
