"""Messages for unknown names, with the nearest valid ones (mergekit ignores typos; we name them)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown(what: str, name: str, choices: Iterable[str], extra: str = "") -> str:
    """``unknown <what> '<name>'<extra>; did you mean ...?`` (or the valid names when none is close)."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    hint = ("did you mean " + " or ".join(repr(c) for c in close) + "?") if close else \
        f"expected one of {', '.join(options)}"
    return f"unknown {what} {name!r}{extra}; {hint}"
