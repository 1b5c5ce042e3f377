"""Frequency-domain crossovers: low frequencies from one model, high frequencies from another."""

from __future__ import annotations

import math
from typing import Any

from mecha_core import MergeError, Same, merge_method

from .tensor_ops import Tensor, computable


def _frequency_radius(spectrum_shape: tuple[int, ...], like: Tensor) -> Tensor:
    """For each bin of an rfftn spectrum, its frequency relative to the highest, in [0, 1].

    The last dimension holds the non-negative half (0 .. Nyquist, spread linearly over [0, 1]); the
    others hold |f| / (n // 2) in FFT order. Several dimensions combine as the root mean square. The
    result has `like`'s device and (real) dtype.
    """
    import torch

    device, dtype = like.device, like.dtype
    axes = []
    for position, size in enumerate(spectrum_shape):
        if position == len(spectrum_shape) - 1 or size == 1:
            axes.append(torch.linspace(0, 1, size, device=device, dtype=dtype))
        else:
            axes.append(torch.fft.fftfreq(size, device=device, dtype=dtype).abs() * size / (size // 2))
    if len(axes) == 1:
        return axes[0]
    grids = torch.meshgrid(*(axis * axis for axis in axes), indexing="ij")
    return (sum(grids) / len(axes)).sqrt()


def _crossover_filter(radius: Tensor, alpha: float, tilt: float, key: str) -> Tensor:
    """How much of b each frequency bin takes: a cut at radius 1 - alpha whose edge is tilted by `tilt`.

    tilt 0 is a hard cut (high frequencies from b); as tilt grows to 1 the edge becomes a ramp of slope
    cot(pi tilt / 2) through (1 - alpha, alpha), and at 1 every bin takes alpha (a weighted sum). From
    1 to 2 the ramp turns over until, at 2, the low frequencies below radius alpha come from b (the
    limit of the ramp; sd-mecha cut at 1 - alpha for tilt exactly 2, a jump); 2 to 4 mirrors 0 to 2
    with a and b exchanged. The period is 4.
    """
    if not 0 <= alpha <= 1:
        raise MergeError(f"key {key!r}: the crossover's alpha must be in [0, 1], got {alpha}")
    tilt = tilt % 4
    mirrored = tilt > 2
    if mirrored:
        alpha = 1 - alpha
        tilt -= 2
    if math.isclose(tilt, 0, abs_tol=1e-10) or math.isclose(tilt, 2, abs_tol=1e-10):
        cut = radius > 1 - alpha if tilt < 1 else radius < alpha
        share = cut.to(radius.dtype)
    else:
        cotangent = 1 / math.tan(math.pi * tilt / 2)
        pivot = 1 - alpha if tilt <= 1 else alpha
        share = (cotangent * (radius - pivot) + alpha).clamp(0, 1)
    return 1 - share if mirrored else share


def _without_spectrum(a: Tensor, b: Tensor, alpha: float, tilt: float) -> Tensor | None:
    """The crossover's value when no spectrum is needed (alpha 0 or 1, a weighted-sum tilt, no
    frequencies in the tensor), else None."""
    if alpha == 0:
        return a.clone()
    if alpha == 1:
        return b.clone()
    if a.dim() == 0 or a.numel() == 0 or math.isclose(tilt % 4, 1):
        return a.lerp(b, alpha)
    return None


@merge_method
def crossover(a: Same, b: Same, *, alpha: float = 0.5, tilt: float = 0.0, key: str = "") -> Same:
    """Frequency crossover of two models: the low frequencies of a with the high frequencies of b.

    Each tensor is taken to the frequency domain (n-dimensional real FFT); a bin at relative frequency
    r in [0, 1] (root mean square over the dimensions) takes the share f(r) of b and 1 - f(r) of a, and
    the result comes back by the inverse FFT. alpha in [0, 1]: where the cut lies (about the fraction
    of the spectrum taken from b); 0 gives a, 1 gives b. tilt: 0 is a hard cut, higher values soften
    it into a ramp, 1 is weighted_sum(a, b, alpha); 2 takes the low frequencies from b instead, and
    the pattern repeats every 4 with a and b exchanged from 2 to 4. A 0-d tensor has no frequencies:
    weighted sum.
    """
    trivial = _without_spectrum(a, b, alpha, tilt)
    if trivial is not None:
        return trivial
    import torch

    shape = tuple(a.shape)
    spectrum_a = torch.fft.rfftn(computable(a), s=shape)
    spectrum_b = torch.fft.rfftn(computable(b), s=shape)
    share = _crossover_filter(_frequency_radius(tuple(spectrum_a.shape), computable(a)), alpha, tilt, key)
    mixed = spectrum_a + share * (spectrum_b - spectrum_a)
    return torch.fft.irfftn(mixed, s=shape).to(a.dtype)


@merge_method
def distribution_crossover(a: Same, b: Same, c: Same, *, alpha: float = 0.5, tilt: float = 0.0,
                           key: str = "") -> Same:
    """Crossover of a and b along the order of c's values instead of their positions.

    The entries of a and b are lined up in the order that sorts c (flattened), crossed over in that
    1-D sequence as crossover does (alpha, tilt), and put back in place: the "frequencies" are how
    fast a and b vary as c's value increases. alpha in [0, 1]: 0 gives a, 1 gives b; tilt as in
    crossover (1: weighted sum).
    """
    trivial = _without_spectrum(a, b, alpha, tilt)
    if trivial is not None:
        return trivial
    import torch

    order = computable(c).reshape(-1).argsort(stable=True)
    line_a = computable(a).reshape(-1)[order]
    line_b = computable(b).reshape(-1)[order]
    spectrum_a, spectrum_b = torch.fft.rfft(line_a), torch.fft.rfft(line_b)
    share = _crossover_filter(_frequency_radius((spectrum_a.numel(),), line_a), alpha, tilt, key)
    line = torch.fft.irfft(spectrum_a + share * (spectrum_b - spectrum_a), line_a.numel())
    result = torch.empty_like(line)
    result[order] = line
    return result.reshape(a.shape).to(a.dtype)


METHODS: list[Any] = [crossover, distribution_crossover]
