"""sd-mecha's TIES and DARE family on deltas: ties_sum and its extensions, dropout (n-supermario)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mecha_core import Delta, merge_method

from .stock import geometric_median, stock_ratio
from .tensor_ops import Tensor, computable, keep_top_fraction, rng, uniform_like


def _elect(deltas: Sequence[Tensor], k: float, vote_sgn: float) -> tuple[Tensor, Tensor]:
    """TIES steps 1-3: trim each delta to its top-k fraction, elect a sign, keep the agreeing entries.

    Returns the trimmed deltas zeroed where they disagree with the elected sign (stacked), and the
    count of agreeing models per entry. vote_sgn <= 0 elects the sign of the summed values, > 0 the
    sign of the summed signs (a majority vote, "TIES-SOUP").
    """
    import torch

    trimmed = torch.stack([keep_top_fraction(computable(d), k) for d in deltas])
    signs = trimmed.sign()
    elected = (signs.sum(dim=0) if vote_sgn > 0 else trimmed.sum(dim=0)).sign()
    agree = signs == elected
    return trimmed * agree, agree.sum(dim=0)


def _ties_mean(deltas: Sequence[Tensor], *, k: float, vote_sgn: float, apply_stock: float, cos_eps: float,
               apply_median: float, eps: float, maxiter: int, ftol: float) -> Tensor:
    """ties_sum_extended on tensors (also the core of ties_sum_with_dropout)."""
    kept, counts = _elect(deltas, k, vote_sgn)
    if apply_median > 0:
        return geometric_median.function(*kept.unbind(0), eps=eps, maxiter=maxiter, ftol=ftol)
    merged = (kept.sum(dim=0) / counts).nan_to_num(nan=0.0)
    if apply_stock > 0:
        merged = merged * stock_ratio(kept.unbind(0), cos_eps)
    return merged


@merge_method
def ties_sum(*models: Delta, k: float = 0.2, vote_sgn: float = 0.0) -> Delta:
    """TIES merging of deltas: trim, elect a sign, average the agreeing entries (arXiv:2306.01708).

    1. each delta keeps its entries of magnitude at or above its m-th smallest, m = max(int((1 - k) n), 1)
       of its n entries: about the top k fraction (k in [0, 1]; 1 keeps all, 0 the largest);
    2. each entry elects a sign: vote_sgn <= 0, the sign of the sum of the trimmed values (the paper);
       vote_sgn > 0, the sign of the sum of their signs, a majority vote ("TIES-SOUP");
    3. the result is the mean of the trimmed values that have the elected sign (0 where none has).
    add_difference_ties(base, *models, alpha=...) builds the whole merge from models.
    """
    return _ties_mean(models, k=k, vote_sgn=vote_sgn, apply_stock=0.0, cos_eps=1e-6, apply_median=0.0,
                      eps=1e-6, maxiter=0, ftol=0.0).to(models[0].dtype)


@merge_method
def ties_sum_extended(*models: Delta, k: float = 0.2, vote_sgn: float = 0.0, apply_stock: float = 0.0,
                      cos_eps: float = 1e-6, apply_median: float = 0.0, eps: float = 1e-6, maxiter: int = 100,
                      ftol: float = 1e-20) -> Delta:
    """ties_sum with Model Stock or the geometric median in place of the mean of agreeing entries.

    Trimming (k) and sign election (vote_sgn) as in ties_sum, then:
    - apply_median > 0 ("TIES-GMEDIAN"): the geometric median of the filtered deltas (disagreeing
      entries count as 0), by Weiszfeld iterations with eps, maxiter and ftol as in geometric_median;
    - else the mean of the agreeing entries, times the Model Stock ratio t of the filtered deltas per
      row when apply_stock > 0 ("TIES-STOCK"; cos_eps as in model_stock_for_tensor).
    The flags keep sd-mecha 0.0.x's meaning (> 0 turns the feature on).
    """
    return _ties_mean(models, k=k, vote_sgn=vote_sgn, apply_stock=apply_stock, cos_eps=cos_eps,
                      apply_median=apply_median, eps=eps, maxiter=maxiter, ftol=ftol).to(models[0].dtype)


@merge_method
def ties_sum_with_dropout(*models: Delta, probability: float = 0.9, no_rescale: float = 0.0, k: float = 0.2,
                          vote_sgn: float = 0.0, apply_stock: float = 0.0, cos_eps: float = 1e-6,
                          apply_median: float = 0.0, eps: float = 1e-6, maxiter: int = 100, ftol: float = 1e-20,
                          seed: int = 0, generator: Any = None) -> Delta:
    """DARE then TIES: drop entries of each delta at random, TIES-merge the rest, rescale (arXiv:2311.03099).

    Each entry of each delta is kept with probability 1 - probability (independently, drawn from a
    generator seeded by `seed` and the key, so a merge is reproducible); the kept deltas go through
    ties_sum_extended (k, vote_sgn, apply_stock, cos_eps, apply_median, eps, maxiter, ftol), and the
    result is divided by 1 - probability to restore the expected magnitude, unless no_rescale > 0
    (sd-mecha 0.0.x's flag; later versions inverted it). probability in [0, 1); 1 drops everything.
    ties_with_dare(base, *models, ...) builds the whole merge from models.
    """
    import torch

    if probability >= 1:
        return torch.zeros_like(models[0])
    draws = rng(generator, seed, models[0].device)
    kept = [torch.where(uniform_like(d, draws) < 1 - probability, d, torch.zeros_like(d)) for d in models]
    merged = _ties_mean(kept, k=k, vote_sgn=vote_sgn, apply_stock=apply_stock, cos_eps=cos_eps,
                        apply_median=apply_median, eps=eps, maxiter=maxiter, ftol=ftol)
    if no_rescale <= 0:
        merged = merged / (1 - probability)
    return merged.to(models[0].dtype)


@merge_method
def dropout(*models: Delta, probability: float = 0.9, overlap: float = 1.0, overlap_emphasis: float = 0.0,
            seed: int = 0, generator: Any = None) -> Delta:
    """Random masks with controlled overlap over any number of deltas ("n-supermario"), rescaled.

    Each entry is dropped by every delta with probability `probability`; otherwise it is kept by a
    random non-empty subset S of the deltas, and the result there is the mean of the kept deltas
    divided by 1 - probability. `overlap` shapes the size of S (period 2, mirrored about 1):
    - an odd integer (1, the default): each delta keeps the entry independently with probability
      1 - probability, the DARE mask;
    - an even integer (0, 2): exactly one delta, chosen uniformly: disjoint masks;
    - in between: subsets weighted by exp(tan(pi (o - 1/2)) (|S| - n/2)), o folded into [0, 1]: small
      subsets below 1/2, uniform at 1/2, large above.
    overlap_emphasis in [0, 1] blends that shape, by 1 - |2o - 1|, towards subset sizes distributed as
    binomial(n, probability), as sd-mecha 0.0.x did (it used the unfolded o there, which gave negative
    probabilities for overlap > 1). Draws come from a generator seeded by `seed` and the key; masks are
    sampled by subset size, not by enumerating the 2^n subsets, so any number of deltas works.
    """
    import torch

    if probability >= 1:
        return torch.zeros_like(models[0])
    draws = rng(generator, seed, models[0].device)
    masks = _overlap_masks(len(models), models[0], probability, overlap, overlap_emphasis, draws)
    total = torch.zeros_like(computable(models[0]))
    for mask, delta in zip(masks, models):
        total += torch.where(mask, computable(delta), torch.zeros((), dtype=total.dtype, device=total.device))
    counts = masks.sum(dim=0).clamp_min(1)
    return (total / counts / (1 - probability)).to(models[0].dtype)


def _overlap_masks(n: int, like: Tensor, probability: float, overlap: float, emphasis: float,
                   generator: Any) -> Tensor:
    """n boolean masks of `like`'s shape, stacked: which deltas keep each entry (see dropout)."""
    import torch

    folded = math.fmod(abs(overlap), 2.0)
    folded = 2.0 - folded if folded > 1 else folded
    if math.isclose(folded, 1.0, abs_tol=1e-9):
        return torch.stack([uniform_like(like, generator) < 1 - probability for _ in range(n)])
    sizes = _subset_size_distribution(n, probability, folded, emphasis)
    choice = torch.multinomial(sizes.to(like.device), max(like.numel(), 1), replacement=True, generator=generator)
    needed = choice[: like.numel()].reshape(like.shape)
    # a uniformly random subset of each entry's size (selection sampling): delta i joins with
    # probability (members still needed) / (deltas left)
    masks = []
    for i in range(n):
        joins = uniform_like(like, generator) * (n - i) < needed
        needed = needed - joins.to(needed.dtype)
        masks.append(joins)
    return torch.stack(masks)


def _subset_size_distribution(n: int, probability: float, overlap: float, emphasis: float) -> Tensor:
    """P(|S| = s) for s = 0..n: s = 0 (dropped everywhere) with `probability`, the rest shaped by overlap."""
    import torch

    sizes = torch.arange(1, n + 1, dtype=torch.float64)
    log_subsets = torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64)) - torch.lgamma(sizes + 1) \
        - torch.lgamma(n - sizes + 1)
    if math.isclose(overlap, 0.0, abs_tol=1e-9):
        shape = (sizes == 1).to(torch.float64)
    else:
        logits = log_subsets + math.tan(math.pi * (overlap - 0.5)) * (sizes - n / 2)
        shape = torch.softmax(logits, dim=0)
    p = min(max(probability, 1e-12), 1 - 1e-12)
    log_binomial = log_subsets + sizes * math.log(p) + (n - sizes) * math.log(1 - p)
    independent = torch.softmax(log_binomial, dim=0)
    blended = shape.lerp(shape.lerp(independent, 1 - abs(2 * overlap - 1)), emphasis).clamp_min(0)
    blended = blended / blended.sum()
    return torch.cat([torch.tensor([probability], dtype=torch.float64), blended * (1 - probability)]).clamp_min(0)


METHODS: list[Any] = [ties_sum, ties_sum_extended, ties_sum_with_dropout, dropout]
