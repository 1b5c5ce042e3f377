"""The math of each algorithm of the LoRA family: which tensors make a module, the shape of its delta,
and its delta a block of rows at a time.

With ``s`` the module's scale (``alpha / rank``; 1 without ``alpha``), a module's delta is

- LoRA/LoCon: ``s * up @ down``; LyCORIS's CP form for convolutions (``lora_mid``, k x k, between a
  1 x 1 ``down`` and ``up``) is ``up @ (mid x down)``: the core contracted with ``down`` is a k x k down;
- LoHa: ``s * (w1_a @ w1_b) * (w2_a @ w2_b)``, the Hadamard product of two low-rank products; in the
  CP form (``hada_t1``/``hada_t2``, k x k cores, with ``w1_a``/``w2_a`` stored as (rank, out)) each
  product is ``w_a^T @ (t x w_b)``;
- LoKr: ``kron(w1, w2)`` with ``w1`` = ``lokr_w1`` or ``w1_a @ w1_b`` and ``w2`` = ``lokr_w2``,
  ``w2_a @ w2_b``, or the CP form ``t2 x w2_a x w2_b``; ``alpha`` scales it only when one of the two is
  a low-rank product (rank: that product's), a module of two full factors is unscaled, as LyCORIS does;
- full: ``diff`` itself (and ``diff_b``, a delta of the layer's bias).

Row ``p`` of every one of these is cheap on its own: rows of ``up``/``w_a`` times a column-side factor
prepared once per module (LoRA, LoHa), or row ``p // b`` of ``w1`` times row ``p % b`` of ``w2``
(LoKr), so a chunk of a key costs its share of the product. ``dora_scale`` (DoRA) rides along: it is
no part of the delta (see :mod:`mecha_lora.dora`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from mecha_core import MechaError

from .lora_file import (ALPHA, DIFF, DIFF_B, DORA_SCALE, HADA, HADA_CP, LOKR, LORA_DOWN, LORA_MID, LORA_UP,
                        Module)

LORA, LOHA, LOKR_ALGO, FULL = "LoRA", "LoHa", "LoKr", "full"

Reader = Callable[[str], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class ModuleMath:
    """One module, checked: its algorithm, its tensors (part -> tensor name), its scale and the (rows,
    columns) of its flattened delta. `kernel` is the conv kernel its factors give; None when they are
    flat (a LoHa/LoKr conv stores ``in * k * k`` columns): the layer's kernel then applies."""

    name: str
    algorithm: str
    parts: Mapping[str, str]
    scale: float
    rank: int | None
    rows: int
    columns: int
    kernel: tuple[int, ...] | None
    dora: str | None  # the dora_scale tensor, when the module is a DoRA
    dora_on_out: bool = True  # DoRA's norms: of each output row (True) or of each input channel

    def tensor(self, part: str) -> str | None:
        return self.parts.get(part)


def algorithm_of(module: Module) -> str:
    """The algorithm a module's parts belong to; an error naming the module when they are of several,
    or of none (a lone alpha or dora_scale)."""
    parts = set(module.parts) - {ALPHA, DORA_SCALE}
    kinds = {kind for kind, members in ((LORA, {LORA_DOWN, LORA_UP, LORA_MID}), (LOHA, HADA | HADA_CP),
                                        (LOKR_ALGO, LOKR), (FULL, {DIFF, DIFF_B})) if parts & members}
    if len(kinds) != 1:
        found = ", ".join(sorted(module.parts.values()))
        problem = "mixes the tensors of " + " and ".join(sorted(kinds)) if kinds else "has no weights"
        raise MechaError(f"LoRA module {module.name!r} {problem} ({found}); a module is one of LoRA/LoCon "
                         f"(lora_down/lora_up), LoHa (hada_w1_a...), LoKr (lokr_w1...) or full (diff)")
    return kinds.pop()


def check(module: Module, shapes: Mapping[str, tuple[int, ...]], alpha: Callable[[], float | None]) -> ModuleMath:
    """The module's math, its tensors' shapes checked against each other (`shapes`: tensor -> shape;
    `alpha`: reads the module's alpha, None when it has none)."""
    algorithm = algorithm_of(module)
    where = f"LoRA module {module.name!r} ({algorithm})"
    parts = module.parts

    def shape(part: str) -> tuple[int, ...]:
        return tuple(shapes[parts[part]])

    def need(*names: str) -> None:
        missing = [name for name in names if name not in parts]
        if missing:
            raise MechaError(f"{where} has no {' or '.join(missing)} (has {', '.join(sorted(parts))})")

    def expect(condition: bool, what: str) -> None:
        if not condition:
            found = ", ".join(f"{part} {list(shape(part))}" for part in sorted(parts) if part not in (ALPHA,))
            raise MechaError(f"{where}: {what} ({found})")

    if algorithm == LORA:
        need(LORA_DOWN, LORA_UP)
        down, up = shape(LORA_DOWN), shape(LORA_UP)
        expect(len(down) in (2, 4) and len(up) == len(down) and up[2:] in ((), (1, 1)),
               "down and up are not a LoRA pair (2-D factors, or a k x k conv down with a 1 x 1 conv up)")
        rank = down[0]
        expect(rank > 0 and up[1] == rank, "down's rows and up's columns disagree on the rank")
        kernel: tuple[int, ...] | None = down[2:]
        columns = math.prod(down[1:])
        if LORA_MID in parts:
            mid = shape(LORA_MID)
            expect(len(down) == 4 and down[2:] == (1, 1) and len(mid) == 4 and mid[:2] == (rank, rank),
                   "lora_mid is not a (rank, rank, k, k) core between 1 x 1 conv factors")
            kernel, columns = mid[2:], down[1] * math.prod(mid[2:])
        rows = up[0]
    elif algorithm == LOHA:
        need(*sorted(HADA))
        cp = bool(set(parts) & HADA_CP)
        if cp:
            need(*sorted(HADA_CP))
        w1a, w1b, w2a, w2b = (shape(p) for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
        expect(all(len(s) == 2 for s in (w1a, w1b, w2a, w2b)), "the hada factors are not matrices")
        rank = w1b[0]
        if cp:
            t1, t2 = shape("hada_t1"), shape("hada_t2")
            expect(len(t1) >= 3 and t1[:2] == (rank, rank) and w1a[0] == rank and w2a[0] == w2b[0] == t2[0] == t2[1]
                   and w1a[1] == w2a[1] and w1b[1] == w2b[1] and t1[2:] == t2[2:],
                   "the CP factors do not fit (t: (rank, rank, k, k), w_a: (rank, out), w_b: (rank, in))")
            rows, kernel, columns = w1a[1], t1[2:], w1b[1] * math.prod(t1[2:])
        else:
            expect(w1a[1] == rank and w2a[1] == w2b[0] and w1a[0] == w2a[0] and w1b[1] == w2b[1],
                   "the two products do not have one shape, or a factor pair disagrees on its rank")
            rows, kernel, columns = w1a[0], None, w1b[1]
        expect(rank > 0, "rank 0")
    elif algorithm == LOKR_ALGO:
        w1_full, w2_full = "lokr_w1" in parts, "lokr_w2" in parts
        if not w1_full:
            need("lokr_w1_a", "lokr_w1_b")
        if not w2_full:
            need("lokr_w2_a", "lokr_w2_b")
        if w1_full:
            expect(len(shape("lokr_w1")) == 2, "lokr_w1 is not a matrix")
            a, c = shape("lokr_w1")
            rank1 = None
        else:
            w1a, w1b = shape("lokr_w1_a"), shape("lokr_w1_b")
            expect(len(w1a) == len(w1b) == 2 and w1a[1] == w1b[0], "lokr_w1_a and lokr_w1_b disagree on the rank")
            a, c, rank1 = w1a[0], w1b[1], w1b[0]
        rank2 = None
        if w2_full:
            w2 = shape("lokr_w2")
            expect(len(w2) in (2, 4), "lokr_w2 is not a matrix or a conv weight")
            b, kernel, columns2 = w2[0], w2[2:], math.prod(w2[1:])
        elif "lokr_t2" in parts:
            w2a, w2b, t2 = shape("lokr_w2_a"), shape("lokr_w2_b"), shape("lokr_t2")
            expect(len(w2a) == len(w2b) == 2 and len(t2) >= 3 and t2[:2] == (w2a[0], w2b[0]),
                   "the CP factors do not fit (t2: (rank, rank, k, k), w2_a: (rank, out), w2_b: (rank, in))")
            b, kernel, columns2, rank2 = w2a[1], t2[2:], w2b[1] * math.prod(t2[2:]), w2a[0]
        else:
            w2a, w2b = shape("lokr_w2_a"), shape("lokr_w2_b")
            expect(len(w2a) == 2 and len(w2b) >= 2 and w2a[1] == w2b[0], "lokr_w2_a and lokr_w2_b disagree on the rank")
            # a flat w2_b: a linear layer, or a conv whose kernel the layer gives
            b, kernel, columns2, rank2 = w2a[0], (w2b[2:] or None), math.prod(w2b[1:]), w2b[0]
        rank = rank1 if rank1 is not None else rank2
        rows, columns = a * b, c * columns2
    else:
        weight = parts.get(DIFF)
        if weight is None:
            need(DIFF_B)
            bias = shape(DIFF_B)
            rows, columns, kernel = bias[0] if bias else 1, 1, ()
        else:
            diff = shape(DIFF)
            expect(len(diff) in (2, 4), "diff is not a linear or conv weight")
            rows, columns, kernel = diff[0], math.prod(diff[1:]), diff[2:]
        rank = None
    expect(rows > 0 and columns > 0, "an empty delta")
    value = alpha() if algorithm != FULL else None
    scale = value / rank if value is not None and rank else 1.0
    if algorithm == LOKR_ALGO and rank is None:
        scale = 1.0  # two full factors: LyCORIS ignores alpha
    return ModuleMath(module.name, algorithm, dict(parts), scale, rank, rows, columns, kernel, parts.get(DORA_SCALE))


# composing ------------------------------------------------------------------------------------------
def prepare(math_: ModuleMath, read: Reader, device: Any, dtype: Any) -> Any:
    """The column side of a module, computed once per module and shared by its row blocks: LoRA's down
    (with its CP core), LoHa's two downs, LoKr's two Kronecker factors as matrices."""
    import torch

    def get(part: str) -> Any:
        return read(math_.parts[part]).to(device=device, dtype=dtype)

    if math_.algorithm == LORA:
        down = get(LORA_DOWN)
        if LORA_MID in math_.parts:
            down = torch.einsum("ijkl,jr->irkl", get(LORA_MID), down.flatten(1))
        return down.reshape(down.shape[0], -1)
    if math_.algorithm == LOHA:
        if "hada_t1" in math_.parts:
            return tuple(torch.einsum("ij...,jr->ir...", get(t), get(w)).reshape(get(w).shape[0], -1)
                         for t, w in (("hada_t1", "hada_w1_b"), ("hada_t2", "hada_w2_b")))
        return get("hada_w1_b"), get("hada_w2_b")
    if math_.algorithm == LOKR_ALGO:
        w1 = get("lokr_w1") if "lokr_w1" in math_.parts else get("lokr_w1_a") @ get("lokr_w1_b")
        if "lokr_w2" in math_.parts:
            w2 = get("lokr_w2")
        elif "lokr_t2" in math_.parts:
            w2 = torch.einsum("ij...,ip,jr->pr...", get("lokr_t2"), get("lokr_w2_a"), get("lokr_w2_b"))
        else:
            w2 = get("lokr_w2_a") @ get("lokr_w2_b").flatten(1)
        return w1, w2.reshape(w2.shape[0], -1)
    return None


def up_rows(math_: ModuleMath, read: Reader, first: int, stop: int) -> Any:
    """Rows [first, stop) of a LoRA's ``up`` as (rows, rank), in the file's dtype."""
    return read(math_.parts[LORA_UP]).reshape(math_.rows, -1)[first:stop]


def block(math_: ModuleMath, read: Reader, prepared: Any, first: int, stop: int) -> Any:
    """Rows [first, stop) of the module's scaled delta, flattened to (rows, columns), float32."""
    import torch
    if math_.algorithm == LORA:
        return (up_rows(math_, read, first, stop).to(torch.float32) * math_.scale) @ prepared
    if math_.algorithm == LOHA:
        product, other = _hadamard_factors(math_, read, prepared, first, stop)
        product.mul_(other)
        return product.mul_(math_.scale) if math_.scale != 1 else product
    if math_.algorithm == LOKR_ALGO:
        w1, w2 = prepared
        rows = torch.arange(first, stop)
        height = w2.shape[0]
        product = (w1[rows // height][:, :, None] * w2[rows % height][:, None, :]).reshape(stop - first, -1)
        return product.mul_(math_.scale) if math_.scale != 1 else product
    return read(math_.parts[DIFF]).reshape(math_.rows, -1)[first:stop].to(torch.float32)


def add_block(math_: ModuleMath, read: Reader, prepared: Any, first: int, stop: int, into: Any, alpha: float) -> None:
    """Add ``alpha`` times rows [first, stop) of the module's scaled delta into `into` (rows, columns).

    LoRA adds ``up @ down`` by ``addmm_`` and LoHa its two products by ``addcmul_``, with no delta
    block and no separate scaling or addition pass; the others compose their block, then add it.
    `prepared` is :func:`prepare`'s, in `into`'s dtype for LoRA and float32 for the others."""
    import torch
    if math_.algorithm == LORA:
        up = up_rows(math_, read, first, stop).to(device=into.device, dtype=into.dtype)
        into.addmm_(up, prepared, alpha=alpha * math_.scale)
    elif math_.algorithm == LOHA:
        first_product, second_product = _hadamard_factors(math_, read, prepared, first, stop)
        into.addcmul_(first_product, second_product, value=alpha * math_.scale)
    else:
        into.add_(block(math_, read, prepared, first, stop), alpha=alpha)


def _hadamard_factors(math_: ModuleMath, read: Reader, prepared: Any, first: int, stop: int) -> tuple[Any, Any]:
    """Rows [first, stop) of a LoHa's two low-rank products, unscaled, float32."""
    import torch
    cp = "hada_t1" in math_.parts

    def ups(part: str) -> Any:
        tensor = read(math_.parts[part])
        return (tensor[:, first:stop].T if cp else tensor[first:stop]).to(torch.float32)

    return ups("hada_w1_a") @ prepared[0], ups("hada_w2_a") @ prepared[1]


def bias_math(math_: ModuleMath) -> ModuleMath:
    """A full module's bias delta (``diff_b``) as a module of its own: (rows, 1), unscaled."""
    bias = math_.parts[DIFF_B]
    return ModuleMath(f"{math_.name} (bias)", FULL, {DIFF: bias}, 1.0, None, math_.rows, 1, (), None)
