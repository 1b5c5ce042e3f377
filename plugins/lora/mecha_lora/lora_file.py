"""A LoRA file's tensors grouped into modules: each module's ``down``, ``up`` and optional ``alpha``.

The tensor name is the module name plus a suffix that says which part it is, in one of the spellings
trainers use: kohya (``.lora_down.weight``, ``.lora_up.weight``, ``.alpha``), PEFT (``.lora_A.weight``,
``.lora_B.weight``), older diffusers (``.lora.down.weight``) and transformers text-encoder LoRAs
(``.lora_linear_layer.down.weight``). Only the header is read here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

DOWN, UP, ALPHA = "down", "up", "alpha"
_SUFFIXES = (
    (".lora_down.weight", DOWN), (".lora_up.weight", UP), (".alpha", ALPHA),
    (".lora_A.weight", DOWN), (".lora_B.weight", UP),
    (".lora.down.weight", DOWN), (".lora.up.weight", UP),
    (".lora_linear_layer.down.weight", DOWN), (".lora_linear_layer.up.weight", UP),
)
# Parts of LyCORIS variants that are not a plain low-rank product; they mark a LoRA-family file whose
# tensors are then reported as unsupported rather than taken for a checkpoint.
UNSUPPORTED_MARKERS = (".hada_w1_a", ".hada_w2_a", ".lokr_w1", ".lokr_w2", ".lora_mid.weight", ".dora_scale")
UNSUPPORTED_NOTE = "LoHa, LoKr, DoRA and Tucker (lora_mid) layers are not supported, only plain LoRA/LoCon"


@dataclasses.dataclass
class Module:
    """One LoRA module: the names of its tensors in the file."""

    name: str
    parts: dict[str, str] = dataclasses.field(default_factory=dict)  # DOWN/UP/ALPHA -> tensor name


@dataclasses.dataclass
class Grouped:
    """The modules of a file, and the tensors that are no part of one."""

    modules: dict[str, Module]
    strays: list[str]


def _split(tensor: str) -> tuple[str, str] | None:
    for suffix, part in _SUFFIXES:
        if tensor.endswith(suffix) and len(tensor) > len(suffix):
            return tensor[: -len(suffix)], part
    return None


def is_lora(tensors: Iterable[str]) -> bool:
    """Whether a file's tensor names are those of a LoRA (a weight of some module in a known spelling, or a
    LyCORIS part), checked without grouping: detection asks this of every model file."""
    for tensor in tensors:
        split = _split(tensor)
        if (split is not None and split[1] != ALPHA) or any(marker in tensor for marker in UNSUPPORTED_MARKERS):
            return True
    return False


def group(tensors: Iterable[str]) -> Grouped:
    """The file's modules; a tensor whose name has no LoRA suffix, or a second tensor for a module's part,
    is a stray."""
    modules: dict[str, Module] = {}
    strays = []
    for tensor in tensors:
        split = _split(tensor)
        if split is None:
            strays.append(tensor)
            continue
        module = modules.setdefault(split[0], Module(split[0]))
        if split[1] in module.parts:
            strays.append(tensor)
        else:
            module.parts[split[1]] = tensor
    return Grouped(modules, strays)
