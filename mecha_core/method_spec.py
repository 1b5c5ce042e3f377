"""The declaration of a merge method, as recipes, planning and the scheduler read it.

Below the recipe module in the core's imports: a recipe node holds the declaration of the method it
calls, and :mod:`mecha_core.merge_method` (above the recipe module) makes a declaration callable,
building recipe nodes, and reads declarations from function signatures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import RecipeError, unknown
from .names import validate_name
from .spaces import SAME, MergeSpace, SpaceDecl, describe

CONTEXT_NAMES = frozenset({"key", "device", "dtype", "generator", "cache"})


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input of a merge method."""

    name: str
    space: SpaceDecl
    variadic: bool = False


@dataclasses.dataclass(frozen=True)
class HyperSpec:
    """One hyperparameter of a merge method."""

    name: str
    kind: type
    default: Any
    per_model: bool = False

    def type_name(self) -> str:
        base = self.kind.__name__
        return f"tuple[{base}, ...]" if self.per_model else base


@dataclasses.dataclass(frozen=True, eq=False)
class MethodSpec:
    """What a merge method declares: its inputs, hyperparameters, result space and the context it asks
    for, and how to call its function on tensors. Recipes, planning and the scheduler read only this;
    :class:`mecha_core.MergeMethod` adds building a recipe node when called."""

    name: str
    function: Callable[..., Any]
    inputs: tuple[InputSpec, ...]
    hypers: tuple[HyperSpec, ...]
    returns: SpaceDecl
    context: frozenset[str]
    takes_kwargs: bool
    elementwise: bool = False
    doc: str = ""
    stored_inputs: bool = False
    coefficients: Callable[..., Sequence[float]] | None = None
    lazy_inputs: bool = False

    def __post_init__(self) -> None:
        validate_name(self.name, "merge method")

    @property
    def summary(self) -> str:
        """The first line of the docstring."""
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""

    @property
    def variadic(self) -> InputSpec | None:
        return next((i for i in self.inputs if i.variadic), None)

    @property
    def wants_generator(self) -> bool:
        return "generator" in self.context or self.takes_kwargs

    def hyper(self, name: str) -> HyperSpec:
        for h in self.hypers:
            if h.name == name:
                return h
        raise RecipeError(unknown("hyperparameter", name, [h.name for h in self.hypers],
                                  f" for merge method {self.name!r}"))

    def signature(self) -> str:
        """The method's signature in recipe terms, e.g. ``weighted_sum(a: Same, b: Same, *, alpha=0.5) -> Same``."""
        parts = []
        for i in self.inputs:
            parts.append(("*" if i.variadic else "") + f"{i.name}: {_space_name(i.space)}")
        if self.hypers:
            if not self.variadic:
                parts.append("*")
            parts.extend(f"{h.name}: {h.type_name()} = {h.default!r}" for h in self.hypers)
        return f"{self.name}({', '.join(parts)}) -> {_space_name(self.returns)}"

    def __repr__(self) -> str:
        return f"<merge method {self.signature()}>"

    def invoke(self, inputs: Sequence[Any], hypers: Mapping[str, Any], context: Mapping[str, Any]) -> Any:
        """Call the function on tensors, with resolved hyperparameters and the context it asks for."""
        kwargs = dict(hypers)
        if self.takes_kwargs:
            kwargs.update(context)
        else:
            for name in self.context:
                kwargs[name] = context.get(name)
        return self.function(*inputs, **kwargs)


def _space_name(space: SpaceDecl) -> str:
    return "Same" if space is SAME else space.value.capitalize()


def describe_mismatch(method: MethodSpec, input_name: str, expected: SpaceDecl, got: MergeSpace) -> str:
    """The message for an input in the wrong space."""
    return (f"merge method {method.name!r}: input {input_name!r} must be in {describe(expected)}, "
            f"but it is in {describe(got)}")
