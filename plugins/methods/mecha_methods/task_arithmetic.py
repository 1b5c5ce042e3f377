"""mergekit's task-arithmetic family: a base model plus sparsified, weighted, sign-filtered task vectors.

Every method here follows one pipeline over the task vectors d_i = m_i - base:
1. sparsify each d_i (top-k magnitude, random drop, ...);
2. weight it: u_i = w_i d_i;
3. optionally elect a sign per entry, s = +1 where sum(u_i) >= 0 else -1, and keep only the u_i with that
   sign (m_i = [sign(u_i) = s]; zeros never agree);
4. M = sum(m_i u_i), divided by sum(m_i w_i) (0 read as 1) when `normalize`; without sign election the
   division is by sum(w_i) (skipped when within 1e-8 of 0);
5. result = base + lambda_ M.

Per-model hyperparameters (`weight`, `density`, `gamma`, `epsilon`) take one value per model after the
base, in the order the models are given: mergekit's ``models: [{model: A, parameters: {weight: 1.0,
density: 0.5}}, ...]`` is ``ties_merge(base, A, B, weight=[1.0, 0.7], density=[0.5, 0.5])`` here
(``weight=[1.0, 0.7]`` in a .mecha recipe); a single value applies to every model, and each value may
be a block/class dict. mergekit's `lambda` is spelled `lambda_` (a Python keyword otherwise).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from mecha_core import LazyInput, MergeError, Weight, merge_method

from .tensor_ops import Tensor, computable, per_model, rng, uniform_like

Sparsify = Callable[[int, Tensor], Tensor]


CHUNK = 1 << 20  # elements of each tensor a chunk of the elementwise steps holds (4 MiB in float32)


def _task_arithmetic(base: Tensor | LazyInput, models: Sequence[Tensor | LazyInput], weight: Sequence[float],
                     sparsify: Sparsify | None, *, consensus: bool, normalize: bool, lambda_: float,
                     top_k: Sequence[float] | None = None) -> Tensor:
    """The shared pipeline described in the module docstring.

    Steps 2 to 5 are elementwise, so they run over CHUNK elements at a time: a large key (an LLM's
    embedding) holds the result and a few chunk-sized temporaries, not a float32 copy of every task
    vector; inputs given as :class:`LazyInput` (``lazy_inputs`` methods) are read a chunk at a time
    too. `top_k` (TIES trim) keeps that: its per-model threshold is found first, in chunks
    (:class:`_TopK`). A `sparsify` function sees whole task vectors (random drops draw one stream per
    tensor), so with one the pipeline runs in a single chunk.
    """
    import torch

    weight = per_model(weight, len(models))
    base, models = LazyInput.of(base), [LazyInput.of(model) for model in models]
    count = base.numel()
    step = max(count, 1) if sparsify is not None else CHUNK
    trims = [_TopK(base, model, density, step) for model, density in zip(models, top_k)] if top_k else None
    out = torch.empty(count, dtype=base.dtype, device=base.device)
    for start in range(0, count, step):
        stop = min(start + step, count)
        origin = computable(base.flat(start, stop))
        weighted = []
        for i, (model, w) in enumerate(zip(models, weight)):
            delta = computable(model.flat(start, stop)) - origin
            if trims is not None:
                delta = trims[i].trim(delta)
            elif sparsify is not None:
                delta = sparsify(i, delta.reshape(base.shape)).reshape(-1)
            weighted.append(delta * w)
        if consensus:
            elected = torch.where(sum(weighted[1:], weighted[0]) >= 0, 1.0, -1.0).to(origin.dtype)
            merged = torch.zeros_like(origin)
            divisor = torch.zeros_like(origin)
            for u, w in zip(weighted, weight):
                agree = u.sign() == elected
                merged += torch.where(agree, u, torch.zeros((), dtype=u.dtype, device=u.device))
                divisor += agree.to(origin.dtype) * w
            if normalize:
                merged = merged / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
        else:
            merged = sum(weighted[1:], weighted[0])
            total = sum(weight)
            if normalize and abs(total) >= 1e-8:
                merged = merged / total
        out[start:stop] = origin + lambda_ * merged
    return out.reshape(base.shape)


class _TopK:
    """TIES trim of one task vector: keep exactly k = int(d numel) entries of largest magnitude (at
    least 1 when d > 0; d <= 0 keeps none, d >= 1 all), equal magnitudes at the cut taken in index order.

    The cut is found without sorting or a float32 copy of the whole task vector: a float's magnitude,
    its bits read as an integer, orders like the magnitude, so counting passes over the chunks, one per
    16 bits (the top 16 bits, then the next 16 inside the one top value where the k-th entry falls,
    ...), give the k-th largest magnitude exactly and how many entries equal to it are kept.
    :meth:`trim` then takes the chunks in order.
    """

    def __init__(self, base: LazyInput, model: LazyInput, density: float, step: int) -> None:
        import torch
        count = base.numel()
        self.keep_all, self.keep_none = density >= 1 or count == 0, density <= 0
        self.cut, self.equal_kept, self.equal_seen = 0, 0, 0
        if self.keep_all or self.keep_none:
            return
        wanted = max(1, int(density * count))
        chunks = [(start, min(start + step, count)) for start in range(0, count, step)]
        width = torch.finfo(computable(base.flat(0, 1)).dtype).bits
        self.bits_dtype = torch.int64 if width == 64 else torch.int32

        def magnitude_bits(start: int, stop: int) -> Tensor:
            origin = computable(base.flat(start, stop))
            return (computable(model.flat(start, stop)) - origin).abs_().view(self.bits_dtype)

        prefix = 0
        for digit in range(width // 16):
            shift = width - 16 * (digit + 1)
            counts = torch.zeros(1 << 16, dtype=torch.int64)
            for start, stop in chunks:
                bits = magnitude_bits(start, stop)
                if digit:
                    bits = bits[(bits >> (shift + 16)) == prefix]
                counts += torch.bincount((bits >> shift) & 0xFFFF, minlength=1 << 16)
            value, wanted = _kth_from_top(counts, wanted)
            prefix = (prefix << 16) | value
        self.cut, self.equal_kept = prefix, wanted

    def trim(self, delta: Tensor) -> Tensor:
        """The next chunk of the task vector, trimmed (chunks must come in order)."""
        import torch
        if self.keep_all:
            return delta
        if self.keep_none:
            return torch.zeros_like(delta)
        bits = delta.abs().view(self.bits_dtype)
        keep = bits > self.cut
        equal = bits == self.cut
        if self.equal_kept > self.equal_seen:
            keep |= equal & (torch.cumsum(equal, 0) <= self.equal_kept - self.equal_seen)
        self.equal_seen += int(equal.sum())
        return torch.where(keep, delta, torch.zeros((), dtype=delta.dtype))


def _kth_from_top(counts: Tensor, wanted: int) -> tuple[int, int]:
    """The value (index into `counts`) holding the `wanted`-th largest entry, and how many entries of
    that value are among the `wanted` largest."""
    import torch
    from_top = torch.cumsum(counts.flip(0), 0)
    position = int(torch.searchsorted(from_top, wanted))
    above = int(from_top[position - 1]) if position > 0 else 0
    return counts.numel() - 1 - position, wanted - above


def _with_details(*paragraphs: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Append shared paragraphs to a method's docstring (the methods of this family share most of them)."""
    def attach(fn: Callable[..., Any]) -> Callable[..., Any]:
        blocks = [textwrap.indent(textwrap.fill(" ".join(p.split()), width=100), "    ") for p in paragraphs]
        fn.__doc__ = (fn.__doc__ or "").rstrip() + "".join("\n\n" + block for block in blocks)
        return fn
    return attach


def _random_drop(density: Sequence[float], rescale: bool, generator: Any) -> Sparsify:
    """DARE: keep each entry with probability d, and divide the kept ones by d (the paper's rescale)."""
    import torch

    def drop(i: int, delta: Tensor) -> Tensor:
        d = density[i]
        if d >= 1:
            return delta
        if d <= 0:
            return torch.zeros_like(delta)
        kept = torch.where(uniform_like(delta, generator) < d, delta, torch.zeros_like(delta))
        return kept / d if rescale else kept

    return drop


def _magnitude_ranked_drop(density: Sequence[float], epsilon: Sequence[float], rescale: bool, generator: Any,
                           key: str) -> Sparsify:
    """DELLA: keep probabilities from d - eps (smallest |d| of a row) to d + eps (largest), rescale by 1/p."""
    import torch

    def drop(i: int, delta: Tensor) -> Tensor:
        d, eps = density[i], epsilon[i]
        if d >= 1 or delta.numel() == 0:
            return delta
        if d <= 0:
            return torch.zeros_like(delta)
        if d - eps < 0 or d + eps > 1:
            raise MergeError(f"key {key!r}, model {i + 1}: della's density {d} +/- epsilon {eps} must stay within "
                             f"[0, 1]; lower epsilon or move density away from 0 and 1")
        table = delta.reshape(delta.shape[0], -1) if delta.dim() >= 2 else delta.reshape(1, -1)
        width = table.shape[1]
        ranks = table.abs().argsort(dim=1).argsort(dim=1).to(table.dtype)
        position = ranks / (width - 1) if width > 1 else torch.full_like(ranks, 0.5)
        keep_probability = d - eps + 2 * eps * position
        kept = uniform_like(table, generator) < keep_probability
        scaled = table / keep_probability if rescale else table
        return torch.where(kept, scaled, torch.zeros_like(table)).reshape(delta.shape)

    return drop


def _drop_extremes(density: Sequence[float], gamma: Sequence[float]) -> Sparsify:
    """Model Breadcrumbs: drop the smallest and the largest (gamma) magnitudes, keeping int(d numel)."""
    import torch

    def trim(i: int, delta: Tensor) -> Tensor:
        n = delta.numel()
        target = min(max(int(density[i] * n), 0), n)
        top = max(int(gamma[i] * n), 0)
        bottom = n - target - top
        if bottom < 0:
            top, bottom = n - target, 0
        order = delta.reshape(-1).abs().argsort(stable=True)
        keep = torch.zeros(n, dtype=torch.bool, device=delta.device)
        keep[order[bottom:bottom + target]] = True
        return torch.where(keep.reshape(delta.shape), delta, torch.zeros_like(delta))

    return trim


def _pipeline(consensus: bool, normalize: bool) -> str:
    """The paragraph every method of the family shares, for its sign election and normalize default."""
    if consensus:
        steps = ("the weighted vectors w_i d_i elect a sign per entry (+ where their sum is >= 0), and only the "
                 "entries with that sign are summed")
        divisor = "the agreeing models' weights"
    else:
        steps = "the weighted vectors w_i d_i are summed"
        divisor = "all the weights"
    return f"""
    With task vectors d_i = m_i - base: {steps}; the result is base + lambda_ times that
    sum. normalize (default {str(normalize).lower()}): first divide the sum by the sum of {divisor}.
    weight: per model, scales its task vector (mergekit's `weight`); lambda_: scales the merged vector
    (mergekit's `lambda`). Per-model values come one per model after the base, weight=[1.0, 0.5] (in
    Python and in .mecha); one value applies to all, and each may be a block/class dict."""


_RANDOM = """
    seed: draws come from a generator seeded by seed and the key, so a merge is reproducible."""

_DELLA = """
    Each row of a task vector (a matrix's rows; a vector is one row) ranks its entries by magnitude: the
    entry of rank r of n is kept with probability p = density - epsilon + 2 epsilon (r - 1)/(n - 1), from
    density - epsilon for the smallest to density + epsilon for the largest (arXiv:2406.11617), and with
    rescale divided by its own p, as the paper does (mergekit scales the whole tensor to its L1 norm
    instead, equal only in expectation). density, epsilon: per model; density - epsilon and density +
    epsilon must stay within [0, 1] (density >= 1 keeps everything, <= 0 nothing)."""

_BREADCRUMBS = """
    Each task vector keeps int(density numel) entries after dropping the int(gamma numel) largest
    magnitudes (outliers) and the smallest ones (arXiv:2312.06795); when density + gamma exceeds 1,
    fewer large ones are dropped. mergekit before 0.1.5 kept nothing when int(gamma numel) was 0
    (gamma 0, or tensors under 100 entries at gamma 0.01); here, as in 0.1.5, the int(density numel)
    largest are kept then. density, gamma: per model, in [0, 1]; density 1 keeps everything."""

_DARE = """
    Each entry of each task vector is kept with probability density (per model, in [0, 1]) and, with
    rescale, divided by density so that the expected vector is unchanged (arXiv:2311.03099); mergekit
    rescales the whole tensor to its former L1 norm instead, equal only in expectation."""


def _task_arithmetic_coefficients(count: int, weight: Any, lambda_: float, normalize: bool) -> tuple[float, ...]:
    """base + lambda_ sum(w_i (m_i - base)) / total: the base's coefficient, then each model's."""
    weight = per_model(weight, count - 1)
    total = sum(weight) if normalize and abs(sum(weight)) >= 1e-8 else 1.0
    models = tuple(lambda_ * w / total for w in weight)
    return (1.0 - sum(models), *models)


@merge_method(elementwise=True, coefficients=_task_arithmetic_coefficients)
@_with_details(_pipeline(consensus=False, normalize=False))
def task_arithmetic(base: Weight, *models: Weight, weight: tuple[float, ...] = 1.0, lambda_: float = 1.0,
                    normalize: bool = False) -> Weight:
    """Task arithmetic: base + lambda_ sum(w_i (m_i - base)) (arXiv:2212.04089; mergekit's).
    """
    return _task_arithmetic(base, models, weight, None, consensus=False, normalize=normalize, lambda_=lambda_)


@merge_method(lazy_inputs=True)
@_with_details(_pipeline(consensus=True, normalize=True))
def ties_merge(base: Weight, *models: Weight, weight: tuple[float, ...] = 1.0, density: tuple[float, ...] = 1.0,
               normalize: bool = True, lambda_: float = 1.0) -> Weight:
    """TIES merging as mergekit does it ("ties"): keep the top density, elect signs, mean of the agreeing.

    Each task vector keeps exactly int(density numel) entries, those of largest magnitude over the
    whole tensor (at least one when density > 0; density <= 0 keeps none, >= 1 all). density: per
    model, in [0, 1] (arXiv:2306.01708).
    """
    return _task_arithmetic(base, models, weight, None, consensus=True, normalize=normalize, lambda_=lambda_,
                            top_k=per_model(density, len(models)))


@merge_method
@_with_details(_DARE, _pipeline(consensus=False, normalize=False), _RANDOM)
def dare(base: Weight, *models: Weight, weight: tuple[float, ...] = 1.0, density: tuple[float, ...] = 1.0,
         rescale: bool = True, normalize: bool = False, lambda_: float = 1.0, seed: int = 0,
         generator: Any = None) -> Weight:
    """DARE, linear (mergekit's dare_linear): drop task-vector entries at random, rescale, weighted sum.
    """
    drop = _random_drop(per_model(density, len(models)), rescale, rng(generator, seed, base.device))
    return _task_arithmetic(base, models, weight, drop, consensus=False, normalize=normalize, lambda_=lambda_)


@merge_method
@_with_details(_DARE, _pipeline(consensus=True, normalize=False), _RANDOM)
def dare_ties(base: Weight, *models: Weight, weight: tuple[float, ...] = 1.0, density: tuple[float, ...] = 1.0,
              rescale: bool = True, normalize: bool = False, lambda_: float = 1.0, seed: int = 0,
              generator: Any = None) -> Weight:
    """DARE with TIES sign election (mergekit's dare_ties): random drop, rescale, sum of the agreeing.
    """
    drop = _random_drop(per_model(density, len(models)), rescale, rng(generator, seed, base.device))
    return _task_arithmetic(base, models, weight, drop, consensus=True, normalize=normalize, lambda_=lambda_)


@merge_method
@_with_details(_DELLA, _pipeline(consensus=True, normalize=True), _RANDOM)
def della(base: Weight, *models: Weight, weight: tuple[float, ...] = 1.0, density: tuple[float, ...] = 1.0,
          epsilon: tuple[float, ...] = 0.15, rescale: bool = True, normalize: bool = True, lambda_: float = 1.0,
          seed: int = 0, generator: Any = None, key: str = "") -> Weight:
    """DELLA (mergekit's della): magnitude-ranked random drop, rescale, TIES sign election.
    """
    drop = _magnitude_ranked_drop(per_model(density, len(models)), per_model(epsilon, len(models)), rescale,
                                  rng(generator, seed, base.device), key)
    return _task_arithmetic(base, models, weight, drop, consensus=True, normalize=normalize, lambda_=lambda_)


@merge_method
@_with_details(_DELLA, _pipeline(consensus=False, normalize=False), _RANDOM)
def della_linear(base: Weight, *models: Weight, weight: tuple[float, ...] = 1.0,
                 density: tuple[float, ...] = 1.0, epsilon: tuple[float, ...] = 0.15, rescale: bool = True,
                 normalize: bool = False, lambda_: float = 1.0, seed: int = 0, generator: Any = None,
                 key: str = "") -> Weight:
    """DELLA without sign election (mergekit's della_linear): magnitude-ranked random drop, weighted sum.
    """
    drop = _magnitude_ranked_drop(per_model(density, len(models)), per_model(epsilon, len(models)), rescale,
                                  rng(generator, seed, base.device), key)
    return _task_arithmetic(base, models, weight, drop, consensus=False, normalize=normalize, lambda_=lambda_)


@merge_method
@_with_details(_BREADCRUMBS, _pipeline(consensus=False, normalize=False))
def breadcrumbs(base: Weight, *models: Weight, weight: tuple[float, ...] = 1.0, density: tuple[float, ...] = 1.0,
                gamma: tuple[float, ...] = 0.01, normalize: bool = False, lambda_: float = 1.0) -> Weight:
    """Model Breadcrumbs (mergekit's breadcrumbs): drop the largest and smallest entries, weighted sum.
    """
    trim = _drop_extremes(per_model(density, len(models)), per_model(gamma, len(models)))
    return _task_arithmetic(base, models, weight, trim, consensus=False, normalize=normalize, lambda_=lambda_)


@merge_method
@_with_details(_BREADCRUMBS, _pipeline(consensus=True, normalize=False))
def breadcrumbs_ties(base: Weight, *models: Weight, weight: tuple[float, ...] = 1.0,
                     density: tuple[float, ...] = 1.0, gamma: tuple[float, ...] = 0.01, normalize: bool = False,
                     lambda_: float = 1.0) -> Weight:
    """Model Breadcrumbs with TIES sign election (mergekit's breadcrumbs_ties).
    """
    trim = _drop_extremes(per_model(density, len(models)), per_model(gamma, len(models)))
    return _task_arithmetic(base, models, weight, trim, consensus=True, normalize=normalize, lambda_=lambda_)


@merge_method
def sce(base: Weight, *models: Weight, select_topk: float = 1.0) -> Weight:
    """SCE (mergekit's sce): select high-variance entries, weight models by energy, erase minority signs.

    1. select: with select_topk < 1, only the int(select_topk n) entries with the largest variance
       across the task vectors are kept (n = entries of nonzero variance), the same for every model;
    2. calculate: each model's weight is its share of the energy, mean(d_i^2) / sum_j mean(d_j^2)
       (equal weights when the total is below 1e-6);
    3. erase: per entry, only the task vectors with the sign of their (unweighted) sum count;
    result = base + sum(w_i m_i d_i) / max(sum(w_i m_i), 1e-6). select_topk in [0, 1].
    """
    import torch

    origin = computable(base)
    deltas = torch.stack([computable(m) - origin for m in models])
    if select_topk < 1 and deltas[0].numel() > 0:
        variance = deltas.var(dim=0, correction=0).reshape(-1)
        count = int(select_topk * int((variance != 0).sum()))
        keep = torch.zeros_like(variance, dtype=torch.bool)
        if count > 0:
            keep[variance.topk(count).indices] = True
        deltas = deltas * keep.reshape(origin.shape)
    energy = (deltas * deltas).reshape(len(models), -1).mean(dim=1).nan_to_num(nan=0.0)
    total = float(energy.sum())
    shares = energy / total if total >= 1e-6 else torch.full_like(energy, 1 / len(models))
    shares = shares.reshape(-1, *([1] * origin.dim()))
    elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(origin.dtype)
    agree = (deltas.sign() == elected).to(origin.dtype) * shares
    merged = (deltas * agree).sum(dim=0) / agree.sum(dim=0).clamp_min(1e-6)
    return (origin + merged).to(base.dtype)


METHODS: list[Any] = [task_arithmetic, ties_merge, dare, dare_ties, della, della_linear, breadcrumbs,
                      breadcrumbs_ties, sce]
