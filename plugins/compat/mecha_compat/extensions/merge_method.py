"""``@convert_to_recipe``: an sd-mecha 0.0.x merge method, registered with the running mecha plugin set.

0.0.x declares a method with annotations over its own merge-space flag::

    @convert_to_recipe
    def my_sum(a: Tensor | LiftFlag[MergeSpace.BASE], b: Tensor | LiftFlag[MergeSpace.BASE], *,
               alpha: Hyper = 0.5, beta: Hyper, **kwargs) -> Tensor | LiftFlag[MergeSpace.BASE]: ...

Here the declaration is read into a :class:`mecha_core.MergeMethod` (``LiftFlag[BASE]`` is ``Weight``,
``LiftFlag[DELTA]`` is ``Delta``; a ``TypeVar`` bound to a flag, or ``BASE | DELTA``, is ``Same``), and a
plugin object providing it is registered with :func:`mecha_core.get_plugins` by a plain call, as 0.0.x
registered it in its own table. The function returned builds recipe nodes; its ``__wrapped__`` is the
tensor function, so one custom method can call another's body as in 0.0.x. A hyperparameter without a
default must be given when the recipe is built. A ``cache`` volatile hyperparameter receives mecha's
per-key cache; other volatile hyperparameters have no mecha counterpart and are refused.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import mecha_core
from mecha_core import Delta, MergeMethod, RecipeNode, Same, Weight, hookimpl

from ..nodes import MergeSpace, RecipeNodeOrPath, path_to_node

T = TypeVar("T")


class LiftFlag(Generic[T]):
    """0.0.x's marker for the merge space of a method's input or result: ``Tensor | LiftFlag[MergeSpace.DELTA]``."""

    def __init__(self) -> None:
        raise TypeError("LiftFlag is an annotation, not a value")


def resolve(identifier: str) -> MergeMethod:
    """The registered merge method of that name (0.0.x's lookup)."""
    return mecha_core.get_plugins().merge_methods.get(identifier)


def convert_to_recipe(f: Callable[..., Any] | None = None, *, volatile_hypers: Iterable[str] = (),
                      register: bool = True) -> Any:
    """Read a 0.0.x method declaration, register the method with mecha (unless `register` is False),
    and return the recipe builder."""
    def wrap(function: Callable[..., Any]) -> Callable[..., RecipeNode]:
        return _convert(function, tuple(volatile_hypers), register)
    return wrap(f) if f is not None else wrap


class _Provider:
    """A plugin object holding one converted method."""

    def __init__(self, method: MergeMethod) -> None:
        self.method = method

    @hookimpl
    def mecha_merge_methods(self) -> list[MergeMethod]:
        return [self.method]


def _convert(function: Callable[..., Any], volatile: tuple[str, ...], register: bool) -> Callable[..., RecipeNode]:
    where = f"{function.__module__}.{function.__qualname__}"
    hints = typing.get_type_hints(function)
    signature = inspect.signature(function)
    stray = [name for name in volatile if name != "cache"]
    if stray:
        raise TypeError(f"{where}: volatile hyperparameter {stray[0]!r} has no mecha counterpart (only 'cache' does)")
    parameters = []
    required = []
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD, param.VAR_POSITIONAL):
            kind = param.VAR_POSITIONAL if param.kind == param.VAR_POSITIONAL else param.POSITIONAL_OR_KEYWORD
            parameters.append(param.replace(kind=kind, annotation=_space(hints.get(param.name)), default=param.empty))
        elif param.kind == param.VAR_KEYWORD:
            parameters.append(param.replace(annotation=param.empty))
        elif param.name in volatile or param.name in ("device", "dtype", "key"):
            continue  # given by mecha's merge context through **kwargs
        else:
            if param.default is param.empty:
                required.append(param.name)
            default = param.default if param.default is not param.empty else None
            kind = int if isinstance(default, int) and not isinstance(default, bool) else float
            parameters.append(param.replace(annotation=kind, default=default))
    if not any(p.kind == p.VAR_KEYWORD for p in parameters):
        raise TypeError(f"{where}: **kwargs must be included in the function parameters (as in sd-mecha 0.0.x)")
    returns = _space(hints.get("return"))

    @functools.wraps(function)
    def body(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    body.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
    del body.__wrapped__  # mecha reads the signature above, not the 0.0.x one
    method = mecha_core.merge_method(body, name=function.__name__)
    if register:
        mecha_core.get_plugins().register(_Provider(method), name=f"sd_mecha_extension:{where}")

    def build(*models: RecipeNodeOrPath, device: str | None = None, dtype: Any = None, **hypers: Any) -> RecipeNode:
        missing = [name for name in required if name not in hypers]
        if missing:
            raise TypeError(f"{function.__name__}() missing required keyword argument {missing[0]!r}")
        return method(*(path_to_node(m) for m in models), device=device, dtype=dtype, **hypers)

    functools.update_wrapper(build, function)
    build.__wrapped_method__ = method  # type: ignore[attr-defined]
    return build


def _space(annotation: Any) -> Any:
    """mecha's space annotation for a 0.0.x one: Weight, Delta, or Same (a TypeVar, both flags, or none)."""
    for arg in typing.get_args(annotation) if annotation is not None else ():
        if isinstance(arg, TypeVar):
            return Same
        if typing.get_origin(arg) is LiftFlag:
            flag = typing.get_args(arg)[0]
            if flag is MergeSpace.BASE:
                return Weight
            if flag is MergeSpace.DELTA:
                return Delta
            return Same
    return Same


__all__ = ["LiftFlag", "MergeSpace", "RecipeNodeOrPath", "convert_to_recipe", "path_to_node", "resolve"]
