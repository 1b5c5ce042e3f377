"""The exceptions mecha raises for problems a user can fix.

Every error a user can act on is a :class:`MechaError`; the CLI prints its message on one line and
exits 1. Anything else escaping the CLI is a bug in mecha or in a plugin.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MechaError(Exception):
    """A problem with the user's input (recipe, model file, option, plugin set-up)."""


class RecipeError(MechaError):
    """A recipe that cannot be built: wrong arity, unknown method or hyperparameter, space mismatch."""


class RecipeSyntaxError(RecipeError):
    """A `.mecha` text that cannot be parsed; the message names the file, the line and shows it."""

    def __init__(self, message: str, *, line_number: int | None = None, line: str | None = None,
                 source: str | None = None) -> None:
        self.line_number = line_number
        self.line = line
        self.source = source
        where = source or "recipe"
        if line_number is not None:
            where += f" line {line_number}"
        text = f"{where}: {message}"
        if line is not None:
            text += f" (in: {shown_line(line)})"
        super().__init__(text)


def shown_line(line: str, limit: int = 120) -> str:
    """A recipe line as an error message quotes it: printable, on one line, and not too long."""
    text = printable(line.strip())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def printable(text: str) -> str:
    """`text` with control and separator characters escaped (``\x1b``, ``\u2028``): text from a file
    must not move the cursor, recolour the terminal or forge extra output lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ModelFileError(MechaError):
    """A model file that cannot be used: missing, not safetensors, corrupt header, pickle."""


class PluginError(MechaError):
    """A plugin that failed to load or conflicts with another one."""


class MergeError(MechaError):
    """A merge that cannot proceed: incompatible inputs, a method failing on a key, non-finite values."""


class Signalled(KeyboardInterrupt):
    """Ctrl-C or a termination signal, raised by the CLI's handlers (a KeyboardInterrupt, so that the
    same clean-up runs): it tells a real interrupt from a KeyboardInterrupt some code raised."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def from_signal(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt comes from a signal rather than from code (a plugin raising it).

    Under Python's own SIGINT handler there is no telling, so any KeyboardInterrupt counts as Ctrl-C;
    the CLI installs handlers raising :class:`Signalled`, and there a bare one comes from code."""
    import signal
    return isinstance(error, Signalled) or signal.getsignal(signal.SIGINT) is signal.default_int_handler


def suggest(name: str, choices: Iterable[str], *, what: str = "name") -> str:
    """A sentence pointing at the nearest valid names, for an unknown `name`."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    if not choices:
        return f"no {what}s are available"
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return f"available {what}s: {shown}"


def unknown(what: str, name: str, choices: Iterable[str], extra: str = "") -> str:
    """The message for an unknown `what` called `name`, with the nearest valid names."""
    return f"unknown {what} {name!r}{extra}; {suggest(name, choices, what=what)}"
