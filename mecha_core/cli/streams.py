"""Standard streams that cannot stop a command: messages going nowhere are dropped, not fatal.

``mecha merge ... 2>&1 | head -c1`` closes the pipe under mecha's progress bar; a write to it then
raises BrokenPipeError, which used to end the merge (exit 0, nothing written). Progress and
messages are not the output, so a stream that fails is pointed at ``/dev/null`` (its file
descriptor too, so that nothing fails at exit either) and the command goes on. Standard output is
guarded the same way only for commands whose output is a file; where standard output *is* the
output (``mecha compose`` without ``-o``, ``mecha info``), a broken pipe still ends the command.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any, TextIO


class Guarded(io.TextIOBase):
    """A text stream whose writes never raise: after the first failure they go nowhere."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.broken = stream is None
        try:
            self.fd: int | None = stream.fileno()  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            self.fd = None  # a stream in memory (tests): nothing to redirect

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)  # type: ignore[union-attr]
                if "\n" in text or "\r" in text:
                    self.stream.flush()  # type: ignore[union-attr]
            except (OSError, ValueError):
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()  # type: ignore[union-attr]
            except (OSError, ValueError):
                self._silence()

    def _silence(self) -> None:
        self.broken = True
        try:  # the interpreter flushes the real stream at exit: give it somewhere to go
            if self.fd is None:
                raise OSError
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.fd)
            os.close(null)
        except OSError:
            pass
        try:
            self.stream.flush()  # type: ignore[union-attr]
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        try:
            return not self.broken and self.stream.isatty()  # type: ignore[union-attr]
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        if self.fd is None:
            raise io.UnsupportedOperation("fileno")
        return self.fd

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True


def guard_stderr() -> Any:
    """Replace ``sys.stderr`` with a guarded one; returns what to restore."""
    previous = sys.stderr
    if not isinstance(previous, Guarded):
        sys.stderr = Guarded(previous)
    return previous


def guard_stdout() -> None:
    """Guard ``sys.stdout`` too (for commands whose output is a file); undone with the stderr guard's restore."""
    if not isinstance(sys.stdout, Guarded):
        sys.stdout = Guarded(sys.stdout)
