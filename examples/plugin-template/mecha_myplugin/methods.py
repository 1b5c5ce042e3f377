"""capped_lerp: interpolate toward another model, but move no weight by more than a cap."""

from __future__ import annotations

from mecha_core import Same, merge_method


@merge_method(elementwise=True)
def capped_lerp(a: Same, b: Same, *, alpha: float = 0.5, cap: float = 0.01) -> Same:
    """Move a toward b by alpha, but no entry by more than cap: a + clamp(alpha * (b - a), -cap, cap).

    A gentle merge: most of a survives where the models disagree strongly, while small differences
    are taken as a plain weighted sum would take them.
    alpha: fraction of the way from a to b (0 gives a, 1 gives b where |b - a| <= cap).
    cap: the largest change of any entry, in absolute value.
    """
    # (b - a) is a new tensor, so the in-place steps after it never touch a or b, which other
    # methods and other keys share.
    return (b - a).mul_(alpha).clamp_(-cap, cap).add_(a)
