"""Interpolation on the hypersphere: slerp (sd-mecha), nuslerp, multislerp and karcher (mergekit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mecha_core import LazyInput, Same, merge_method

from .tensor_ops import Tensor, computable, gram, linear_combination, per_model


@merge_method(lazy_inputs=True)
def slerp(a: Same, b: Same, *, alpha: float = 0.5) -> Same:
    """Spherical interpolation of two models (sd-mecha's), each tensor flattened.

    The directions a/|a| and b/|b| move along their great circle by alpha, and the norm is
    interpolated linearly: (|a| + alpha (|b| - |a|)) (sin((1-alpha) w) a/|a| + sin(alpha w) b/|b|) / sin w,
    with w the angle between a and b. Zero, parallel or opposite tensors fall back to weighted_sum.
    alpha: 0 gives a, 1 gives b.
    """
    import math

    a, b = LazyInput.of(a), LazyInput.of(b)
    (squares_a, dot), (_, squares_b) = gram((a, b))
    norm_a, norm_b = math.sqrt(squares_a), math.sqrt(squares_b)
    if not (norm_a > 1e-12 and norm_b > 1e-12):
        return linear_combination((a, b), (1 - alpha, alpha))
    omega = math.acos(min(max(dot / (norm_a * norm_b), -1.0), 1.0))
    sine = math.sin(omega)
    if not abs(sine) > 1e-6:
        return linear_combination((a, b), (1 - alpha, alpha))
    scale = (norm_a + alpha * (norm_b - norm_a)) / sine
    return linear_combination((a, b), (math.sin((1 - alpha) * omega) * scale / norm_a,
                                       math.sin(alpha * omega) * scale / norm_b))


@merge_method(lazy_inputs=True)
def nuslerp(a: Same, b: Same, *, weight: tuple[float, ...] = 1.0, nuslerp_flatten: bool = True,
            nuslerp_row_wise: bool = False) -> Same:
    """mergekit's NuSLERP: slerp of two models at t = w_b / (w_a + w_b).

    The slerp acts on the tensors themselves (not their directions): with w the angle between a and b,
    sin((1-t) w)/sin w a + sin(t w)/sin w b; nearly parallel vectors (1 - cos^2 <= 1e-16) use
    (1-t) a + t b. weight: one value per model, as mergekit's per-model `weight`; t is 0.5 when they sum
    to about 0. nuslerp_flatten: one slerp over the whole tensor (default); false slerps each vector
    along the last dimension (the rows of an (out, in) matrix), or along dim 0 (the columns) with
    nuslerp_row_wise, mergekit's naming kept so its configs mean the same here. mergekit's base model:
    give deltas and add the result back, add_difference(base, nuslerp(subtract(a, base), subtract(b, base))).
    """
    import torch

    weight = per_model(weight, 2)
    total = weight[0] + weight[1]
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    a, b = LazyInput.of(a), LazyInput.of(b)
    if a.numel() == 0:
        return a.whole().lerp(b.whole(), t)
    if nuslerp_flatten or len(a.shape) < 2:
        return _slerp_whole(a, b, t)
    x, y = computable(a.whole()), computable(b.whole())
    if nuslerp_row_wise:
        vectors_x, vectors_y = x.movedim(0, -1), y.movedim(0, -1)
    else:
        vectors_x, vectors_y = x, y
    unit_x = vectors_x / torch.linalg.vector_norm(vectors_x, dim=-1, keepdim=True).clamp_min(1e-7)
    unit_y = vectors_y / torch.linalg.vector_norm(vectors_y, dim=-1, keepdim=True).clamp_min(1e-7)
    cosine = (unit_x * unit_y).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    degenerate = 1 - cosine * cosine <= 1e-16
    omega = torch.arccos(cosine)
    sine = torch.where(degenerate, torch.ones_like(omega), torch.sin(omega))
    curved = (torch.sin((1 - t) * omega) * vectors_x + torch.sin(t * omega) * vectors_y) / sine
    result = torch.where(degenerate, vectors_x.lerp(vectors_y, t), curved)
    if nuslerp_row_wise:
        result = result.movedim(-1, 0)
    return result.reshape(a.shape).to(a.dtype)


def _slerp_whole(a: LazyInput, b: LazyInput, t: float) -> Tensor:
    """nuslerp over the whole flattened tensors: the norms and the angle first (:func:`gram`), then
    the result as one combination of the two (:func:`linear_combination`)."""
    import math

    (squares_a, dot), (_, squares_b) = gram((a, b))
    norm_a, norm_b = max(math.sqrt(squares_a), 1e-7), max(math.sqrt(squares_b), 1e-7)
    cosine = min(max(dot / (norm_a * norm_b), -1.0), 1.0)
    if 1 - cosine * cosine <= 1e-16:
        return linear_combination((a, b), (1 - t, t))
    omega = math.acos(cosine)
    return linear_combination((a, b), (math.sin((1 - t) * omega) / math.sin(omega),
                                       math.sin(t * omega) / math.sin(omega)))


@merge_method
def multislerp(*models: Same, weight: tuple[float, ...] = 1.0, normalize_weights: bool = True,
               eps: float = 1e-8, max_iter: int = 10, tol: float = 1e-5) -> Same:
    """Weighted spherical mean of any number of models (mergekit's multislerp, done right).

    Each tensor x_i (flattened) has a direction u_i = x_i/|x_i| and a norm; the result is the weighted
    Karcher mean m of the directions on the hypersphere, times the weighted mean norm sum(w_i |x_i|).
    Starting from the normalised weighted mean of the u_i, m moves along the weighted mean of the
    logarithm maps (theta_i / sin theta_i)(u_i - cos theta_i m) until that step is below `tol` radians
    or `max_iter` steps were taken; two models therefore give exactly slerp of their directions with
    the norms interpolated linearly. mergekit 0.1.5 takes a single step with the tangents
    u_i - <u_i, m> m, whose weighted sum is identically zero, so it returns the normalised weighted mean
    (nlerp); we iterate the true logarithm map instead.
    weight: one value per model (mergekit's per-model `weight`). normalize_weights: scale the weights
    to sum to 1 (mergekit's default). eps: zero-norm guard. When the directions cancel out
    (|sum w_i u_i| < eps) there is no mean direction and the weighted linear sum is returned.
    mergekit's base model: give deltas (subtract(model, base)) and add the result back to the base.
    """
    import torch

    weights = list(per_model(weight, len(models)))
    if normalize_weights:
        total = sum(weights)
        if abs(total) >= 1e-8:
            weights = [w / total for w in weights]
    flats = [computable(m).reshape(-1) for m in models]
    if flats[0].numel() == 0:
        return models[0].clone()
    norms = [torch.linalg.vector_norm(x) for x in flats]
    direction = _mean_direction([x / (n + eps) for x, n in zip(flats, norms)], weights, eps=eps,
                                max_iter=max_iter, tol=tol)
    if direction is None:
        merged = sum(w * x for w, x in zip(weights, flats))
    else:
        merged = direction * sum(w * n for w, n in zip(weights, norms))
    return merged.reshape(models[0].shape).to(models[0].dtype)


@merge_method
def karcher(*models: Same, max_iter: int = 10, tol: float = 1e-5) -> Same:
    """Karcher (Riemannian) mean of any number of models with equal weights (mergekit's "karcher").

    Each tensor (flattened) is split into a direction and a norm; the directions are averaged on the
    hypersphere by iterating m <- exp_m(mean_i log_m(u_i)) from their normalised mean, at most
    `max_iter` times or until the step is below `tol` radians, and the result is m times the mean norm.
    Inputs with norm <= tol have no direction and only count in the mean norm; when the directions
    cancel out (their mean is shorter than tol) there is no mean direction and the result is 0.
    """
    import torch

    flats = [computable(m).reshape(-1) for m in models]
    norms = [torch.linalg.vector_norm(x) for x in flats]
    units = [x / n for x, n in zip(flats, norms) if bool(n > tol)]
    if not units:
        return torch.zeros_like(models[0])
    direction = _mean_direction(units, [1 / len(units)] * len(units), eps=tol, max_iter=max_iter, tol=tol)
    if direction is None:
        return torch.zeros_like(models[0])
    return (direction * (sum(norms) / len(models))).reshape(models[0].shape).to(models[0].dtype)


def _mean_direction(units: Sequence[Tensor], weights: Sequence[float], *, eps: float, max_iter: int,
                    tol: float) -> Tensor | None:
    """The weighted Karcher mean of unit vectors, or None when their weighted sum is shorter than eps."""
    import torch

    mean = sum(w * u for w, u in zip(weights, units))
    mean_norm = torch.linalg.vector_norm(mean)
    if not bool(mean_norm >= eps):
        return None
    mean = mean / mean_norm
    for _ in range(max(0, int(max_iter))):
        step = torch.zeros_like(mean)
        for w, u in zip(weights, units):
            cosine = (mean * u).sum().clamp(-1.0, 1.0)
            angle = torch.arccos(cosine)
            if bool(angle > tol):
                step += (w * angle / torch.sin(angle)) * (u - cosine * mean)
        length = torch.linalg.vector_norm(step)
        if not bool(length >= tol):
            break
        mean = torch.cos(length) * mean + torch.sin(length) * (step / length)
        mean = mean / torch.linalg.vector_norm(mean)
    return mean


METHODS: list[Any] = [slerp, nuslerp, multislerp, karcher]
