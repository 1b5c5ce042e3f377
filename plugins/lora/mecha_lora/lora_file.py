"""A LoRA file's tensors grouped into modules: each module's parts, by the names trainers give them.

The tensor name is the module name plus a suffix that says which part it is:

- LoRA/LoCon: kohya (``.lora_down.weight``, ``.lora_up.weight``, LyCORIS's CP core ``.lora_mid.weight``),
  PEFT (``.lora_A.weight``, ``.lora_B.weight``), older diffusers (``.lora.down.weight``, and
  ``.to_q_lora.down.weight`` of its attention processors) and transformers text-encoder LoRAs
  (``.lora_linear_layer.down.weight``);
- LyCORIS: LoHa (``.hada_w1_a`` ... ``.hada_t2``), LoKr (``.lokr_w1``, ``.lokr_w1_a`` ... ``.lokr_t2``),
  full (``.diff``, ``.diff_b``);
- every algorithm: ``.alpha``, and DoRA's magnitude, ``.dora_scale`` (LyCORIS, kohya) or PEFT's
  ``.lora_magnitude_vector``.

Only the header is read here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

LORA_DOWN, LORA_UP, LORA_MID, ALPHA, DORA_SCALE = "lora_down", "lora_up", "lora_mid", "alpha", "dora_scale"
DIFF, DIFF_B = "diff", "diff_b"
HADA = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"})
HADA_CP = frozenset({"hada_t1", "hada_t2"})
LOKR = frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"})
_SUFFIXES = (
    (".lora_down.weight", LORA_DOWN), (".lora_up.weight", LORA_UP), (".lora_mid.weight", LORA_MID),
    (".lora_A.weight", LORA_DOWN), (".lora_B.weight", LORA_UP),
    (".lora.down.weight", LORA_DOWN), (".lora.up.weight", LORA_UP),
    (".lora_linear_layer.down.weight", LORA_DOWN), (".lora_linear_layer.up.weight", LORA_UP),
    ("_lora.down.weight", LORA_DOWN), ("_lora.up.weight", LORA_UP),
    (".lora_magnitude_vector.weight", DORA_SCALE), (".lora_magnitude_vector", DORA_SCALE),
    (".alpha", ALPHA), (".dora_scale", DORA_SCALE), (".diff_b", DIFF_B), (".diff", DIFF),
    *((f".{part}", part) for part in sorted(HADA | HADA_CP | LOKR)),
)
# Parts of LyCORIS algorithms mecha does not compose (OFT, BOFT, GLoRA, IA3): they mark a LoRA-family
# file whose tensors are then reported as unsupported rather than taken for a checkpoint.
UNSUPPORTED_MARKERS = (".oft_blocks", ".oft_diag", ".boft_", ".a1.weight", ".b1.weight", ".on_input")
UNSUPPORTED_NOTE = ("unsupported: OFT, BOFT, GLoRA and IA3 layers; mecha reads LoRA/LoCon, LoHa, LoKr, full "
                    "(diff) and DoRA")


@dataclasses.dataclass
class Module:
    """One LoRA module: the names of its tensors in the file."""

    name: str
    parts: dict[str, str] = dataclasses.field(default_factory=dict)  # part (LORA_DOWN, "hada_w1_a"...) -> tensor


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
        if (split is not None and split[1] not in (ALPHA, DORA_SCALE)) or \
                any(marker in tensor for marker in UNSUPPORTED_MARKERS):
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
