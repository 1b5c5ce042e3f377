"""A LoRA opened for an architecture: the checkpoint keys it targets, each key's delta composed on demand.

A module's delta follows its algorithm (:mod:`~mecha_lora.algorithms`: LoRA/LoCon, LoHa, LoKr, full).
A key made of row slices (a fused q/k/v projection, FLUX's fused q/k/v/MLP ``linear1``) is the modules
of its slices stacked, zero where a slice has none. A delta is computed ROW_BLOCK rows at a time when the
scheduler asks for the key (or for a chunk of it: only the rows holding the chunk): composed in float32
and freed with it, or, for ``add_difference``, added straight into the merge's buffer. Shapes come from
the LoRA's own factors (a flat conv factor takes the layer's kernel), checked once when the file is opened.

A DoRA module (``dora_scale``) changes its layer by a rule of the layer's weight (:mod:`~mecha_lora.dora`):
it is only ever added into a model's weights, whole keys at a time, and reading it as a delta is refused.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import threading
from collections.abc import Collection, Iterator
from typing import Any

from mecha_core import Architecture, MechaError, TensorFile, TensorInfo, dtypes

from . import algorithms, dora
from .algorithms import FULL, LORA, ModuleMath
from .lora_file import ALPHA, DIFF, DIFF_B, Module
from .naming import Target, conventions
from .placement import place

FLOAT32 = "F32"
ROW_BLOCK = 64  # rows of a product computed per matmul (see LoraSource._product_rows)


@dataclasses.dataclass(frozen=True)
class DeltaPlan:
    """How one checkpoint key's delta is made: its shape, and the module of each of its row slices."""

    shape: tuple[int, ...]
    pieces: tuple[tuple[ModuleMath, int], ...]  # (module, its first row in the key), by first row
    swap: bool

    @property
    def dora(self) -> ModuleMath | None:
        """The first DoRA module of the key, if it has one."""
        return next((module for module, _ in self.pieces if module.dora), None)


class LoraSource:
    """A :class:`mecha_core.KeySource` over a LoRA file: the keys it targets and their composed deltas."""

    def __init__(self, file: TensorFile, architecture: Architecture) -> None:
        self.file = file
        self.label = file.label
        self._plans: dict[str, DeltaPlan] = {}
        placed = place(file, architecture)
        self.naming = ", ".join(conventions(module.name for pieces in placed.values() for module, _ in pieces))
        for key, pieces in placed.items():
            checked = [(self._module(module), target) for module, target in pieces]
            weights = [(math_, target) for math_, target in checked if DIFF in math_.parts or math_.algorithm != FULL]
            if weights:
                self._plans[key] = self._plan(key, weights, architecture)
            biases = [(algorithms.bias_math(math_), target) for math_, target in checked if DIFF_B in math_.parts]
            if biases:
                bias_key = _bias_key(key, architecture)
                if bias_key is None:
                    raise MechaError(f"{self.label}: LoRA module {biases[0][0].name!r} has a bias delta (diff_b), but "
                                     f"its layer {key!r} has no bias")
                self._plans[bias_key] = self._plan(bias_key, biases, architecture)
        # a DoRA key is changed in whole rows and columns (its norms), so the file is read whole keys at a
        # time; a chunk of a plain LoRA's delta costs its share of the product, so elementwise merges
        # stream those in chunks
        self.supports_ranges = not any(plan.dora for plan in self._plans.values())
        # a DoRA changes a weight by a rule of that weight: the scheduler adds it only into weights
        self.adds_to_weights = not self.supports_ranges
        self._prepared = threading.local()  # the chunks of a key run on one thread, one after another

    def keys(self) -> Collection[str]:
        return self._plans.keys()

    def info(self, key: str) -> TensorInfo:
        return TensorInfo(FLOAT32, self._plans[key].shape)

    def describe(self) -> dict[str, str]:
        """What ``mecha inspect`` shows of the file: its naming, and how many modules of each algorithm
        it holds (``LoKr x 12, LoRA+DoRA x 3``)."""
        seen = {module.name: module for plan in self._plans.values() for module, _ in plan.pieces
                if not module.name.endswith(" (bias)")}
        counts = collections.Counter(module.algorithm + ("+DoRA" if module.dora else "") for module in seen.values())
        return {"naming": self.naming, "algorithms": ", ".join(f"{name} x {count}" for name, count in sorted(counts.items()))}

    def read(self, key: str) -> Any:
        """The key's delta, float32, in the checkpoint's layout."""
        plan = self._plans[key]
        self._refuse_dora(key, plan)
        return self._rows(plan, 0, plan.shape[0]).reshape(plan.shape)

    def read_flat(self, key: str, start: int, stop: int) -> Any:
        """Elements [start, stop) of the flattened delta, composing only the rows that hold them."""
        plan = self._plans[key]
        self._refuse_dora(key, plan)
        columns = plan.pieces[0][0].columns
        first_row, stop_row = start // columns, -(-stop // columns)
        rows = self._rows(plan, first_row, stop_row)
        skip = start - first_row * columns
        return rows.reshape(-1)[skip:skip + stop - start]

    def add_flat(self, key: str, start: int, stop: int, into: Any, alpha: float) -> None:
        """Add ``alpha`` times elements [start, stop) of the flattened delta into `into`.

        A LoRA's rows go straight into `into` by ``addmm_``: the delta is never materialised, and baking
        it is one pass over the checkpoint's values; other algorithms add a block of rows at a time. A
        key with a DoRA module is changed by the DoRA rule applied to what `into` holds, the weight it
        is added to (the scheduler calls this only for a buffer of weights, whole keys at a time)."""
        plan = self._plans[key]
        columns = plan.pieces[0][0].columns
        if plan.dora:
            if (start, stop) != (0, math.prod(plan.shape)):
                raise MechaError(f"{self.label}: key {key!r} holds a DoRA module, which needs the whole key at once")
            dora.add(plan, self._rows(plan, 0, plan.shape[0]), into, alpha, self.file.read)
            return
        for row, module, low, high in self._pieces(plan, start // columns, -(-stop // columns)):
            if module is not None:
                first = max(row * columns - start, 0)
                last = min((row + high - low) * columns - start, stop - start)
                skip = max(start - row * columns, 0)
                self._add_product_rows(module, low, high, skip, into[first:last], alpha)

    def close(self) -> None:
        self.file.close()

    def _refuse_dora(self, key: str, plan: DeltaPlan) -> None:
        module = plan.dora
        if module is not None:
            raise MechaError(f"{self.label}: LoRA module {module.name!r} is a DoRA (it has a dora_scale): its change "
                             f"to {key!r} depends on the weight it is applied to, so it is no delta of its own to mix "
                             f"with other deltas or save as a LoRA; add it to a model instead: "
                             f"add_difference(model, dora, alpha)")

    def _pieces(self, plan: DeltaPlan, start: int, stop: int) -> Iterator[tuple[int, ModuleMath | None, int, int]]:
        """Rows [start, stop) of the key's delta as runs of one module's rows: (the run's first row in
        the key, the module or None for a block without one, the module's rows [low, high))."""
        total = plan.shape[0]
        row = start
        while row < stop:
            # a swapped key is the delta rolled by half its rows: row i is unrolled row (i - half) mod rows
            unrolled = (row - total // 2) % total if plan.swap else row
            module, first, end = _holding(plan, unrolled)
            count = min(stop - row, end - unrolled)
            yield row, module, unrolled - first, unrolled - first + count
            row += count

    def _rows(self, plan: DeltaPlan, start: int, stop: int) -> Any:
        """Rows [start, stop) of the key's delta flattened to (rows, columns), zero where a block has no module."""
        import torch
        columns = plan.pieces[0][0].columns
        blocks = [self._product_rows(module, low, high) if module is not None
                  else torch.zeros((high - low, columns), dtype=torch.float32)
                  for _, module, low, high in self._pieces(plan, start, stop)]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def _product_rows(self, module: ModuleMath, low: int, high: int) -> Any:
        """Rows [low, high) of one module's scaled delta.

        The delta is always computed in the same blocks of ROW_BLOCK rows (a BLAS gives a row bits
        that depend on how many rows it multiplies at once), so the rows of any chunk are bit for bit
        those of the whole delta."""
        import torch
        first, stop = _block_bounds(module, low, high)
        out = torch.empty((stop - first, module.columns), dtype=torch.float32)
        prepared = self._prepare(module, out.device, torch.float32)
        if module.algorithm == LORA:
            up = algorithms.up_rows(module, self.file.read, first, stop).to(torch.float32)
            if module.scale != 1:
                up = up * module.scale
            for row in range(0, stop - first, ROW_BLOCK):
                torch.mm(up[row:row + ROW_BLOCK], prepared, out=out[row:row + ROW_BLOCK])
        else:
            read = _read_once(self.file.read)
            for row in range(first, stop, ROW_BLOCK):
                end = min(row + ROW_BLOCK, stop)
                out[row - first:end - first] = algorithms.block(module, read, prepared, row, end)
        return out[low - first:high - first]

    def _add_product_rows(self, module: ModuleMath, low: int, high: int, skip: int, target: Any, alpha: float) -> None:
        """Add ``alpha`` times the module's delta to `target`, the flat elements of the module's rows
        [low, high) from `skip` elements into row `low` on.

        Computed in the blocks of ROW_BLOCK rows ``_product_rows`` uses, so any chunk adds what the
        whole key would. A block wholly inside `target` is added in place (:func:`algorithms.add_block`:
        LoRA by ``addmm_``, LoHa by ``addcmul_`` of its two products), a block `target` holds only part
        of through a scratch copy of it (an entry of either depends only on its own value and its own
        row and column factors, whatever the scratch holds elsewhere)."""
        import torch
        first, stop = _block_bounds(module, low, high)
        columns = module.columns
        begin = (low - first) * columns + skip  # where target starts in the blocks' flat elements
        end = begin + target.numel()
        dtype = target.dtype if module.algorithm == LORA else torch.float32
        prepared = self._prepare(module, target.device, dtype)
        read = _read_once(self.file.read)
        for row in range(first, stop, ROW_BLOCK):
            height = min(ROW_BLOCK, stop - row)
            block_start = (row - first) * columns
            block_end = block_start + height * columns
            if block_start >= begin and block_end <= end:
                into = target[block_start - begin:block_end - begin].view(height, columns)
                algorithms.add_block(module, read, prepared, row, row + height, into, alpha)
                continue
            low_end, high_end = max(block_start, begin), min(block_end, end)
            if low_end >= high_end:
                continue
            scratch = torch.zeros(height * columns, dtype=target.dtype, device=target.device)
            part = scratch[low_end - block_start:high_end - block_start]
            part.copy_(target[low_end - begin:high_end - begin])
            algorithms.add_block(module, read, prepared, row, row + height, scratch.view(height, columns), alpha)
            target[low_end - begin:high_end - begin].copy_(part)

    def _prepare(self, module: ModuleMath, device: Any, dtype: Any) -> Any:
        """The module's column side (:func:`algorithms.prepare`), kept for the next chunk of the same key."""
        last = getattr(self._prepared, "value", None)
        if last is not None and last[0] == (id(module), device, dtype):
            return last[1]
        prepared = algorithms.prepare(module, self.file.read, device, dtype)
        self._prepared.value = ((id(module), device, dtype), prepared)
        return prepared

    # checks, once per file ------------------------------------------------------------------------
    def _plan(self, key: str, pieces: list[tuple[ModuleMath, Target]], architecture: Architecture) -> DeltaPlan:
        names = ", ".join(module.name for module, _ in pieces)
        if len({target.swap for _, target in pieces}) > 1:
            raise MechaError(f"{self.label}: LoRA modules {names} all target key {key!r} in different row orders")
        spec = architecture.key_specs[key].shape
        resolved = [(self._with_kernel(module, key, spec), target) for module, target in pieces]
        first = resolved[0][0]
        if any((m.columns, m.kernel) != (first.columns, first.kernel) for m, _ in resolved):
            raise MechaError(f"{self.label}: LoRA modules {names} are blocks of key {key!r} but their shapes differ")
        placed, heights = [], set()
        for module, target in resolved:
            found = target.rows_in(module.rows, spec[0])
            if found is None:
                raise MechaError(f"{self.label}: LoRA module {module.name!r} has {module.rows} rows, which fit no "
                                 f"slice of {target.rows} of key {key!r}'s {spec[0]} rows (or their scale)")
            placed.append((module, found[0]))
            heights.add(found[1])
        if len(heights) > 1:
            raise MechaError(f"{self.label}: LoRA modules {names} are blocks of key {key!r} but their shapes differ")
        rows = heights.pop()
        placed.sort(key=lambda piece: piece[1])
        if any(low + module.rows > high for (module, low), (_, high) in zip(placed, placed[1:])):
            raise MechaError(f"{self.label}: LoRA modules {names} all target key {key!r} and overlap; a LoRA "
                             f"holds one module per layer (or one per q/k/v block)")
        if pieces[0][1].swap and rows % 2:
            raise MechaError(f"{self.label}: module {names} has {rows} rows; its layer {key!r} needs an even count")
        kernel = first.kernel or ()
        if len(spec) == 1:
            shape: tuple[int, ...] = (rows,)
        elif len(spec) == 4 and not kernel:  # a linear LoRA of a 1x1 convolution
            shape = (rows, first.columns, 1, 1)
        elif len(spec) == 2 and kernel == (1, 1):  # a 1x1 conv LoRA of a linear layer
            shape = (rows, first.columns)
        elif kernel:
            shape = (rows, first.columns // math.prod(kernel), *kernel)
        else:
            shape = (rows, first.columns)
        checked = tuple((dora.checked(module, shape, self.file.tensors, self.label), low) for module, low in placed)
        return DeltaPlan(shape, checked, pieces[0][1].swap)

    def _with_kernel(self, module: ModuleMath, key: str, spec: tuple[int, ...]) -> ModuleMath:
        """A module whose factors are flat (``in * k * k`` columns) takes the kernel of its layer."""
        if module.kernel is not None:
            return module
        kernel = tuple(spec[2:])
        if kernel and module.columns % math.prod(kernel):
            raise MechaError(f"{self.label}: LoRA module {module.name!r} ({module.algorithm}) has {module.columns} "
                             f"columns, not a whole number of its layer {key!r}'s {'x'.join(map(str, kernel))} kernels")
        return dataclasses.replace(module, kernel=kernel)

    def _module(self, module: Module) -> ModuleMath:
        where = f"{self.label}: LoRA module {module.name!r}"
        for part, name in module.parts.items():
            info = self.file.tensors[name]
            if not dtypes.is_float_name(info.torch_dtype_name):
                raise MechaError(f"{where}: its {part} is {info.torch_dtype_name}, expected floating point")
        shapes = {name: tuple(self.file.tensors[name].shape) for name in module.parts.values()}
        try:
            return algorithms.check(module, shapes, lambda: self._alpha(module, where))
        except MechaError as error:
            raise MechaError(f"{self.label}: {error}") from None

    def _alpha(self, module: Module, where: str) -> float | None:
        """The module's alpha; None when it has none (its delta is then unscaled)."""
        name = module.parts.get(ALPHA)
        if name is None:
            return None
        info = self.file.tensors[name]
        if info.numel != 1:
            raise MechaError(f"{where}: alpha has shape {list(info.shape)}, expected one number")
        alpha = float(self.file.read(name).reshape(()).item())
        if not math.isfinite(alpha):
            raise MechaError(f"{where}: alpha is {alpha}, expected a finite number")
        return alpha


def _holding(plan: DeltaPlan, row: int) -> tuple[ModuleMath | None, int, int]:
    """The module holding a row of a key's (unrolled) delta, its first row and its end; in a gap between
    modules None, the row itself and the next module's first row (or the key's end)."""
    for module, first in plan.pieces:
        if row < first:
            return None, row, first
        if row < first + module.rows:
            return module, first, first + module.rows
    return None, row, plan.shape[0]


def _bias_key(key: str, architecture: Architecture) -> str | None:
    """The bias of a weight key (``...weight`` -> ``...bias``; OpenCLIP's ``in_proj_weight`` ->
    ``in_proj_bias``), when the architecture has one."""
    if not key.endswith("weight"):
        return None
    bias = key[:-len("weight")] + "bias"
    return bias if bias in architecture.key_specs else None


def _read_once(read: algorithms.Reader) -> algorithms.Reader:
    """`read`, each tensor read from the file once: a module's row factors serve all its row blocks."""
    return functools.cache(read)


def _block_bounds(module: ModuleMath, low: int, high: int) -> tuple[int, int]:
    """The rows of the ROW_BLOCK-aligned blocks holding rows [low, high) of a module's delta."""
    return low // ROW_BLOCK * ROW_BLOCK, min(-(-high // ROW_BLOCK) * ROW_BLOCK, module.rows)
