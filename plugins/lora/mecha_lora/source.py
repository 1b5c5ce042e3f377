"""A LoRA opened for an architecture: the checkpoint keys it targets, each key's delta composed on demand.

A module's delta is ``up @ down * alpha / rank`` (rank: the rows of ``down``; no ``alpha``: scale 1).
A conv module (LoCon) has a ``k x k`` ``down`` and a ``1 x 1`` ``up``: the product of ``up`` and
``down`` flattened to ``(rank, in * k * k)`` is the conv weight's delta. A key made of row blocks (a fused
q/k/v projection) is the modules of its blocks stacked, zero where a block has none. Each delta is one
float32 matmul, computed when the scheduler asks for the key and freed with it; shapes come from the
LoRA's own factors, checked once when the file is opened.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from typing import Any

from mecha_core import Architecture, MechaError, dtypes
from mecha_core.tensor_files import TensorFile, TensorInfo

from .lora_file import ALPHA, DOWN, UP, Module
from .naming import Target
from .placement import place

FLOAT32 = "F32"


@dataclasses.dataclass(frozen=True)
class Factors:
    """One module, checked: its tensors, scale, and the (rows, columns) of its flattened delta."""

    down: str
    up: str
    scale: float
    rank: int
    rows: int
    columns: int
    kernel: tuple[int, ...]  # the conv kernel of ``down``, () for a linear module


@dataclasses.dataclass(frozen=True)
class DeltaPlan:
    """How one checkpoint key's delta is made: its shape, and the factors of each of its `parts` row blocks."""

    shape: tuple[int, ...]
    pieces: tuple[tuple[Factors, int], ...]  # (factors, row block)
    parts: int
    swap: bool


class LoraSource:
    """A :class:`mecha_core.KeySource` over a LoRA file: the keys it targets and their composed deltas."""

    supports_ranges = False  # a slice of a product costs the whole product

    def __init__(self, file: TensorFile, architecture: Architecture) -> None:
        self.file = file
        self.label = file.label
        self._plans = {key: self._plan(key, pieces, architecture) for key, pieces in place(file, architecture).items()}

    def keys(self) -> Collection[str]:
        return self._plans.keys()

    def info(self, key: str) -> TensorInfo:
        return TensorInfo(FLOAT32, self._plans[key].shape)

    def read(self, key: str) -> Any:
        """The key's delta, float32, in the checkpoint's layout."""
        import torch
        plan = self._plans[key]
        first = plan.pieces[0][0]
        if plan.parts == 1:
            delta = self._product(first)
        else:
            delta = torch.zeros((first.rows * plan.parts, first.columns), dtype=torch.float32)
            for factors, part in plan.pieces:
                rows = slice(part * first.rows, (part + 1) * first.rows)
                torch.mm(self._scaled_up(factors), self._down(factors), out=delta[rows])
        if plan.swap:
            delta = delta.roll(delta.shape[0] // 2, dims=0)
        return delta.reshape(plan.shape)

    def read_flat(self, key: str, start: int, stop: int) -> Any:
        """Elements [start, stop) of the flattened delta (the whole delta is composed: see supports_ranges)."""
        return self.read(key).reshape(-1)[start:stop]

    def close(self) -> None:
        self.file.close()

    def _product(self, factors: Factors) -> Any:
        import torch
        return torch.mm(self._scaled_up(factors), self._down(factors))

    def _scaled_up(self, factors: Factors) -> Any:
        import torch
        up = self.file.read(factors.up).reshape(factors.rows, factors.rank).to(torch.float32)
        return up if factors.scale == 1 else up * factors.scale

    def _down(self, factors: Factors) -> Any:
        import torch
        return self.file.read(factors.down).reshape(factors.rank, factors.columns).to(torch.float32)

    # checks, once per file ------------------------------------------------------------------------
    def _plan(self, key: str, pieces: list[tuple[Module, Target]], architecture: Architecture) -> DeltaPlan:
        checked = [(self._factors(module), target) for module, target in pieces]
        names = ", ".join(module.name for module, _ in pieces)
        parts = {target.parts for _, target in checked}
        blocks = [target.part for _, target in checked]
        if len(parts) > 1 or len(set(blocks)) < len(blocks) or len({t.swap for _, t in checked}) > 1:
            raise MechaError(f"{self.label}: LoRA modules {names} all target key {key!r} and overlap; a LoRA "
                             f"holds one module per layer (or one per q/k/v block)")
        first = checked[0][0]
        if any((f.rows, f.columns, f.kernel) != (first.rows, first.columns, first.kernel) for f, _ in checked):
            raise MechaError(f"{self.label}: LoRA modules {names} are blocks of key {key!r} but their shapes differ")
        rows = first.rows * parts.pop()
        if checked[0][1].swap and rows % 2:
            raise MechaError(f"{self.label}: module {names} has {rows} rows; its layer {key!r} needs an even count")
        spec_dims = len(architecture.key_specs[key].shape)
        if spec_dims == 4 and not first.kernel:  # a linear LoRA of a 1x1 convolution
            shape: tuple[int, ...] = (rows, first.columns, 1, 1)
        elif spec_dims == 2 and first.kernel == (1, 1):  # a 1x1 conv LoRA of a linear layer
            shape = (rows, first.columns)
        elif first.kernel:
            shape = (rows, first.columns // math.prod(first.kernel), *first.kernel)
        else:
            shape = (rows, first.columns)
        return DeltaPlan(shape, tuple((f, t.part) for f, t in checked), checked[0][1].parts, checked[0][1].swap)

    def _factors(self, module: Module) -> Factors:
        where = f"{self.label}: LoRA module {module.name!r}"
        for part in (DOWN, UP):
            if part not in module.parts:
                raise MechaError(f"{where} has no {part} weight (expected {module.name}.lora_{part}.weight or the "
                                 f"PEFT lora_A/lora_B spelling)")
        down, up = self.file.tensors[module.parts[DOWN]], self.file.tensors[module.parts[UP]]
        for info, part in ((down, DOWN), (up, UP)):
            if not dtypes.is_float_name(info.torch_dtype_name):
                raise MechaError(f"{where}: its {part} weight is {info.torch_dtype_name}, expected floating point")
        if len(down.shape) not in (2, 4) or len(up.shape) != len(down.shape) or up.shape[2:] not in ((), (1, 1)):
            raise MechaError(f"{where}: down {list(down.shape)} and up {list(up.shape)} are not a LoRA pair (expected "
                             f"2-D factors, or a k x k conv down with a 1 x 1 conv up)")
        rank = down.shape[0]
        if rank == 0 or up.shape[1] != rank:
            raise MechaError(f"{where}: down {list(down.shape)} and up {list(up.shape)} disagree on the rank "
                             f"(down's rows must equal up's columns, and be at least 1)")
        return Factors(module.parts[DOWN], module.parts[UP], self._alpha(module, where) / rank, rank, up.shape[0],
                       math.prod(down.shape[1:]), tuple(down.shape[2:]))

    def _alpha(self, module: Module, where: str) -> float:
        """The module's alpha; without one the delta is up @ down unscaled (alpha = rank)."""
        name = module.parts.get(ALPHA)
        if name is None:
            return float(self.file.tensors[module.parts[DOWN]].shape[0])
        info = self.file.tensors[name]
        if info.numel != 1:
            raise MechaError(f"{where}: alpha has shape {list(info.shape)}, expected one number")
        alpha = float(self.file.read(name).reshape(()).item())
        if not math.isfinite(alpha):
            raise MechaError(f"{where}: alpha is {alpha}, expected a finite number")
        return alpha
