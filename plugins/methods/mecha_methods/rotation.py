"""Alignment of one model's neurons onto another's by an orthogonal transform (rotate)."""

from __future__ import annotations

from typing import Any

from mecha_core import MergeError, Same, merge_method

from .tensor_ops import Tensor, computable


@merge_method
def rotate(a: Same, b: Same, *, alignment: float = 1.0, alpha: float = 0.0, key: str = "",
           cache: Any = None) -> Same:
    """Rotate a's neurons onto b's (orthogonal Procrustes), then optionally move towards b.

    A tensor is read as a set of neurons: the rows of a matrix, the rows of (out, in) for a
    1x1 convolution, each (out, in) pair's kernel for a larger one. Both sets are centred; R is the
    orthogonal matrix that best maps a's neurons onto b's (R = U V^T from the SVD of a^T b).
    result = (lerp(a, b R^T, alpha)) R^alignment + lerp(centre_a, centre_b, alignment), all centred.
    alignment: 0 leaves the orientation, 1 rotates fully onto b, fractions rotate part way (a real
    fractional power of R, whose reflection is removed first), other integers repeat the rotation.
    alpha: 0 keeps a's neurons' relationships, 1 takes b's (alignment 1 and alpha 1 give b).
    Vectors and 0-d tensors have no neurons to rotate: weighted_sum(a, b, alpha).
    The SVD and eigendecomposition of a key are kept in the cache the merge is given
    (mecha.merge(..., cache={})), with a fingerprint of a and b: an entry made from other tensors is
    recomputed, never reused.
    """
    import torch

    if alignment == 0 and alpha == 0:
        return a.clone()
    if a.dim() < 2 or a.numel() == 0 or torch.equal(a, b):
        return a.lerp(b, alpha)
    spatial = a.shape[2:].numel() if a.dim() == 4 else 1
    rows = a.shape[0] * a.shape[1] if spatial != 1 else a.shape[0]
    x = computable(a).reshape(rows, -1)
    y = computable(b).reshape(rows, -1)
    centre_a, centre_b = x.mean(dim=0), y.mean(dim=0)
    x, y = x - centre_a, y - centre_b

    fractional = alignment != round(alignment)
    store = cache if cache is not None else {}
    fingerprint = _fingerprint(x, y)
    if store.get("inputs") != fingerprint:
        store.clear()
        store["inputs"] = fingerprint
    rotation = _cached(store, "proper_rotation" if fractional else "rotation", x.device, x.dtype,
                       lambda: _procrustes(x, y, proper=fractional, key=key))
    if fractional:
        transform = _fractional_power(rotation, alignment, store)
    elif round(alignment) == 0:
        transform = torch.eye(rotation.shape[0], dtype=x.dtype, device=x.device)
    else:
        transform = torch.linalg.matrix_power(rotation, round(alignment))
    if alpha != 0:
        x = x.lerp(y @ rotation.T, alpha)
    result = x @ transform + centre_a.lerp(centre_b, alignment)
    return result.reshape(a.shape).to(a.dtype)


def _fingerprint(x: Tensor, y: Tensor) -> tuple[Any, ...]:
    """A cheap summary of the centred neurons that tells a cache entry's tensors from others."""
    return (tuple(x.shape), float(x.sum()), float((x * x).sum()), float(y.sum()), float((y * y).sum()),
            float((x * y).sum()))


def _cached(store: dict[str, Any], name: str, device: Any, dtype: Any, compute: Any) -> Tensor:
    """store[name] on `device`, computing and keeping it (on the CPU) first when absent."""
    if name not in store:
        store[name] = compute().cpu()
    return store[name].to(device=device, dtype=dtype)


def _procrustes(x: Tensor, y: Tensor, *, proper: bool, key: str) -> Tensor:
    """The orthogonal R minimising |x R - y|; with `proper`, the best one with determinant +1.

    The SVD is retried in float64 when float32 does not converge, which happens on the CPU for some
    ill-conditioned layers.
    """
    import torch

    for dtype in dict.fromkeys((x.dtype, torch.float64)):
        try:
            u, _, v_t = torch.linalg.svd(x.to(dtype).T @ y.to(dtype))
        except RuntimeError:
            continue
        if proper:
            u = u.clone()
            u[:, -1] *= torch.sign(torch.linalg.det(u) * torch.linalg.det(v_t))
        rotation = u @ v_t
        if bool(torch.isfinite(rotation).all()):
            return rotation.to(x.dtype)
    raise MergeError(f"rotate: the SVD of key {key!r} did not converge, even in float64; set alignment to 0 "
                     f"(and use alpha) for this key's block, or merge it with another method")


def _fractional_power(rotation: Tensor, power: float, store: dict[str, Any]) -> Tensor:
    """rotation^power through its eigendecomposition V diag(l) V^-1, real part (eigenparts cached)."""
    import torch

    complex_dtype = torch.complex128 if rotation.dtype == torch.float64 else torch.complex64

    def decompose() -> Tensor:
        values, vectors = torch.linalg.eig(rotation)
        return torch.cat([values.unsqueeze(0), vectors, torch.linalg.inv(vectors)])

    parts = _cached(store, "eigen", rotation.device, complex_dtype, decompose)
    size = rotation.shape[0]
    values, vectors, inverse = parts[0], parts[1:size + 1], parts[size + 1:]
    return ((vectors * values.pow(power)) @ inverse).real.to(rotation.dtype)


METHODS: list[Any] = [rotate]
