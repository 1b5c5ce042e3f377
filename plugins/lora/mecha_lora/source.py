"""A LoRA opened for an architecture: the checkpoint keys it targets, each key's delta composed on demand.

A module's delta is ``up @ down * alpha / rank`` (rank: the rows of ``down``; no ``alpha``: scale 1).
A conv module (LoCon) has a ``k x k`` ``down`` and a ``1 x 1`` ``up``: the product of ``up`` and
``down`` flattened to ``(rank, in * k * k)`` is the conv weight's delta. A key made of row blocks (a fused
q/k/v projection) is the modules of its blocks stacked, zero where a block has none. A delta is
computed ROW_BLOCK rows per matmul when the scheduler asks for the key (or for a chunk of it: only the
rows holding the chunk): composed in float32 and freed with it, or, for ``add_difference``, added
straight into the merge's buffer. Shapes come from the LoRA's own factors, checked once when the file
is opened.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Collection, Iterator
from typing import Any

from mecha_core import Architecture, MechaError, TensorFile, TensorInfo, dtypes

from .lora_file import ALPHA, DOWN, UP, Module
from .naming import Target
from .placement import place

FLOAT32 = "F32"
ROW_BLOCK = 64  # rows of a product computed per matmul (see LoraSource._product_rows)


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

    # a flat range of a delta covers a few of its rows, and rows of ``up @ down`` are rows of ``up``
    # times ``down``: a chunk costs its share of the product, so elementwise merges stream LoRAs too
    supports_ranges = True

    def __init__(self, file: TensorFile, architecture: Architecture) -> None:
        self.file = file
        self.label = file.label
        self._plans = {key: self._plan(key, pieces, architecture) for key, pieces in place(file, architecture).items()}
        self._last_down = threading.local()  # the chunks of a key run on one thread, one after another

    def keys(self) -> Collection[str]:
        return self._plans.keys()

    def info(self, key: str) -> TensorInfo:
        return TensorInfo(FLOAT32, self._plans[key].shape)

    def read(self, key: str) -> Any:
        """The key's delta, float32, in the checkpoint's layout."""
        plan = self._plans[key]
        return self._rows(plan, 0, plan.shape[0]).reshape(plan.shape)

    def read_flat(self, key: str, start: int, stop: int) -> Any:
        """Elements [start, stop) of the flattened delta, composing only the rows that hold them."""
        plan = self._plans[key]
        columns = plan.pieces[0][0].columns
        first_row, stop_row = start // columns, -(-stop // columns)
        rows = self._rows(plan, first_row, stop_row)
        skip = start - first_row * columns
        return rows.reshape(-1)[skip:skip + stop - start]

    def add_flat(self, key: str, start: int, stop: int, into: Any, alpha: float) -> None:
        """Add ``alpha`` times elements [start, stop) of the flattened delta into `into`.

        Each module's rows go straight into `into` by ``addmm_``: the delta is never materialised,
        and baking a LoRA is one pass over the checkpoint's values."""
        plan = self._plans[key]
        columns = plan.pieces[0][0].columns
        for row, factors, low, high in self._pieces(plan, start // columns, -(-stop // columns)):
            if factors is not None:
                first = max(row * columns - start, 0)
                last = min((row + high - low) * columns - start, stop - start)
                skip = max(start - row * columns, 0)
                self._add_product_rows(factors, low, high, skip, into[first:last], alpha)

    def close(self) -> None:
        self.file.close()

    def _pieces(self, plan: DeltaPlan, start: int, stop: int) -> Iterator[tuple[int, Factors | None, int, int]]:
        """Rows [start, stop) of the key's delta as runs of one module's rows: (the run's first row in
        the key, the module or None for a block without one, the module's rows [low, high))."""
        total, height = plan.shape[0], plan.pieces[0][0].rows
        by_part = {part: factors for factors, part in plan.pieces}
        row = start
        while row < stop:
            # a swapped key is the delta rolled by half its rows: row i is unrolled row (i - half) mod rows
            unrolled = (row - total // 2) % total if plan.swap else row
            part, low = divmod(unrolled, height)
            count = min(stop - row, total - unrolled, height - low)
            yield row, by_part.get(part), low, low + count
            row += count

    def _rows(self, plan: DeltaPlan, start: int, stop: int) -> Any:
        """Rows [start, stop) of the key's delta flattened to (rows, columns), zero where a block has no module."""
        import torch
        columns = plan.pieces[0][0].columns
        blocks = [self._product_rows(factors, low, high) if factors is not None
                  else torch.zeros((high - low, columns), dtype=torch.float32)
                  for _, factors, low, high in self._pieces(plan, start, stop)]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def _product_rows(self, factors: Factors, low: int, high: int) -> Any:
        """Rows [low, high) of one module's ``up @ down * scale``.

        The product is always computed in the same blocks of ROW_BLOCK rows of ``up`` (a BLAS gives
        a row bits that depend on how many rows it multiplies at once), so the rows of any chunk are
        bit for bit those of the whole delta."""
        import torch
        first, stop = _block_bounds(factors, low, high)
        up = self._up_rows(factors, first, stop).to(torch.float32)
        if factors.scale != 1:
            up = up * factors.scale
        down = self._down(factors, up.device, torch.float32)
        out = torch.empty((stop - first, factors.columns), dtype=torch.float32)
        for row in range(0, stop - first, ROW_BLOCK):
            torch.mm(up[row:row + ROW_BLOCK], down, out=out[row:row + ROW_BLOCK])
        return out[low - first:high - first]

    def _add_product_rows(self, factors: Factors, low: int, high: int, skip: int, target: Any, alpha: float) -> None:
        """Add ``alpha * scale * up @ down`` to `target`, the flat elements of the module's rows
        [low, high) from `skip` elements into row `low` on.

        Computed in the blocks of ROW_BLOCK rows ``_product_rows`` uses, so any chunk adds what the
        whole key would: a block wholly inside `target` in place, a block `target` holds only part of
        through a scratch copy of it (an entry of ``addmm_`` depends only on its own value, its row
        of ``up`` and ``down``, whatever the scratch holds elsewhere)."""
        import torch
        first, stop = _block_bounds(factors, low, high)
        columns = factors.columns
        up = self._up_rows(factors, first, stop).to(device=target.device, dtype=target.dtype)
        down = self._down(factors, target.device, target.dtype)
        scale = alpha * factors.scale
        begin = (low - first) * columns + skip  # where target starts in the blocks' flat elements
        end = begin + target.numel()
        for row in range(0, stop - first, ROW_BLOCK):
            height = min(ROW_BLOCK, stop - first - row)
            block_start, block_end = row * columns, (row + height) * columns
            if block_start >= begin and block_end <= end:
                block = target[block_start - begin:block_end - begin].view(height, columns)
                block.addmm_(up[row:row + height], down, alpha=scale)
            else:
                low_end, high_end = max(block_start, begin), min(block_end, end)
                scratch = torch.zeros(height * columns, dtype=target.dtype, device=target.device)
                part = scratch[low_end - block_start:high_end - block_start]
                part.copy_(target[low_end - begin:high_end - begin])
                scratch.view(height, columns).addmm_(up[row:row + height], down, alpha=scale)
                target[low_end - begin:high_end - begin].copy_(part)

    def _up_rows(self, factors: Factors, first: int, stop: int) -> Any:
        """Rows [first, stop) of ``up`` as (rows, rank), a view of the file in its stored dtype."""
        return self.file.read(factors.up).reshape(factors.rows, factors.rank)[first:stop]

    def _down(self, factors: Factors, device: Any, dtype: Any) -> Any:
        last = getattr(self._last_down, "value", None)
        if last is not None and last[0] == (factors.down, device, dtype):
            return last[1]
        down = self.file.read(factors.down).reshape(factors.rank, factors.columns).to(device=device, dtype=dtype)
        self._last_down.value = ((factors.down, device, dtype), down)
        return down

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


def _block_bounds(factors: Factors, low: int, high: int) -> tuple[int, int]:
    """The rows of the ROW_BLOCK-aligned blocks holding rows [low, high) of a module's product."""
    return low // ROW_BLOCK * ROW_BLOCK, min(-(-high // ROW_BLOCK) * ROW_BLOCK, factors.rows)
