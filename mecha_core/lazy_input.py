"""Inputs a merge method reads range by range instead of receiving them whole.

A method whose every output entry depends on statistics of whole tensors (a norm, an angle, a top-k
threshold) cannot be fed chunks the way an elementwise one is, so the scheduler gives it whole
tensors: for an LLM's 65 M-entry embedding that is each input read into memory, then converted. A
method declared ``@merge_method(lazy_inputs=True)`` instead receives each input as a
:class:`LazyInput` and reads the ranges it needs when it needs them, in as many passes as it likes
(statistics first, then the result a chunk at a time): memory then holds the result and a chunk's
temporaries, whatever the number of inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


class LazyInput:
    """One input of a ``lazy_inputs`` method: its shape, dtype and device, and its values range by range.

    Values come in the dtype the method would have received the whole tensor in (the work dtype, on
    the method's device: `dtype` and `device` say which, so that a result can be allocated before
    anything is read). A model's range is read from its file on each call; a computed value is
    sliced. Treat what :meth:`flat` returns as read-only: it may be a view of a value other methods
    share.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any, device: Any, read: Callable[[int, int], Any]) -> None:
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = device
        self._read = read

    @classmethod
    def of(cls, value: Any) -> LazyInput:
        """`value` as a lazy input: itself if it is one, else a tensor in memory wrapped (so that a
        ``lazy_inputs`` method can also be called directly on tensors)."""
        if isinstance(value, LazyInput):
            return value
        flat = value.reshape(-1)
        return cls(tuple(value.shape), value.dtype, value.device, lambda start, stop: flat[start:stop])

    def numel(self) -> int:
        return math.prod(self.shape)

    def flat(self, start: int, stop: int) -> Any:
        """Elements [start, stop) of the flattened input, as a 1-D tensor."""
        if not 0 <= start <= stop <= self.numel():
            raise IndexError(f"range [{start}, {stop}) outside an input of {self.numel()} elements")
        return self._read(start, stop)

    def whole(self) -> Any:
        """The whole input in its shape (for a step that needs it all, e.g. a small key)."""
        return self.flat(0, self.numel()).reshape(self.shape)

