"""`@merge_method`: a plain tensor function becomes a registered, recipe-building merge method.

The function's signature is the method's declaration:

- positional parameters are input models, annotated with a merge space (``Weight``, ``Delta``,
  ``Same``; unannotated means ``Same``); a ``*models`` parameter takes any number of them;
- keyword-only parameters with defaults are hyperparameters (``float``, ``int``, ``bool``, ``str``,
  or ``tuple[float, ...]`` for one value per model, whose default may be a scalar given to every model);
- keyword-only parameters named ``key``, ``device``, ``dtype``, ``generator`` or ``cache``, and a
  ``**kwargs`` parameter, receive the merge context instead.

Calling the decorated object with models builds a recipe node; nothing is computed until the recipe
is merged.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

from .method_spec import CONTEXT_NAMES, HyperSpec, InputSpec, MethodSpec
from .names import validate_name
from .recipe import MergeNode, as_node
from .spaces import SAME, space_of_annotation


class MergeMethod(MethodSpec):
    """A merge method: its declaration (:class:`MethodSpec`), and a recipe builder when called."""

    def __call__(self, *models: Any, device: str | None = None, dtype: Any = None, **hypers: Any) -> MergeNode:
        """Build a recipe node calling this method on `models` with `hypers`."""
        nodes = tuple(as_node(m) for m in models)
        return MergeNode.build(self, nodes, hypers, device=device, dtype=dtype)


def merge_method(function: Callable[..., Any] | None = None, *, name: str | None = None,
                 elementwise: bool = False, stored_inputs: bool = False,
                 coefficients: Callable[..., Sequence[float]] | None = None, lazy_inputs: bool = False) -> Any:
    """Turn a tensor function into a :class:`MergeMethod`.

    ``elementwise=True`` promises that each output entry depends only on the same entry of each input,
    so the scheduler may feed the function flat chunks of a large tensor instead of the whole tensor.

    ``stored_inputs=True`` asks for model inputs in the dtype their file stores (fp16, say) instead of
    the work dtype; the function converts them itself and returns a result in the work dtype (it
    must take the ``dtype`` context). A method reducing many models can then fold each input into an
    fp32 accumulator in one pass (``total.add_(model)``) instead of converting every input first.

    ``coefficients`` declares an elementwise method a linear combination of its inputs: called with
    the number of inputs and the hyperparameters by name, it returns each input's coefficient
    (``add_difference``: ``lambda count, alpha: (1.0, alpha)``). The scheduler then adds the inputs
    into one buffer instead of calling the function, and a source that can add its values without
    materialising them (a LoRA's low-rank product) does so in place: baking a LoRA costs one pass
    over the checkpoint. The function stays the definition; ``mecha_core.testing.check_merge_method``
    checks that the two agree.

    ``lazy_inputs=True`` gives the function each input as a :class:`mecha_core.LazyInput` to read
    range by range (``x.flat(start, stop)``), for a method that needs whole-tensor statistics (norms,
    a top-k threshold) and can then compute its result a chunk at a time: a large key then costs its
    result and one chunk's temporaries instead of every input in memory. Such a function should also
    accept plain tensors (``LazyInput.of`` takes either), so that it can be called
    directly.
    """
    def wrap(fn: Callable[..., Any]) -> MergeMethod:
        return _build(fn, name or fn.__name__, elementwise, stored_inputs, coefficients, lazy_inputs)

    return wrap(function) if function is not None else wrap


def _build(fn: Callable[..., Any], name: str, elementwise: bool, stored_inputs: bool = False,
           coefficients: Callable[..., Sequence[float]] | None = None, lazy_inputs: bool = False) -> MergeMethod:
    validate_name(name, "merge method")
    where = f"merge method {name!r} ({fn.__module__}.{fn.__qualname__})"
    signature = inspect.signature(fn)
    inputs: list[InputSpec] = []
    hypers: list[HyperSpec] = []
    context: set[str] = set()
    takes_kwargs = False
    for param in signature.parameters.values():
        annotation = _evaluate(param.annotation, fn, where)
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD, param.VAR_POSITIONAL):
            if param.default is not param.empty:
                raise TypeError(f"{where}: input {param.name!r} has a default; make it a keyword-only "
                                f"hyperparameter (after '*') instead")
            space = space_of_annotation(annotation) if annotation is not param.empty else SAME
            if space is None:
                raise TypeError(f"{where}: annotate input {param.name!r} with Weight, Delta or Same")
            inputs.append(InputSpec(param.name, space, param.kind == param.VAR_POSITIONAL))
        elif param.kind == param.VAR_KEYWORD:
            takes_kwargs = True
        elif param.name in CONTEXT_NAMES:
            context.add(param.name)
        else:
            if param.default is param.empty:
                raise TypeError(f"{where}: hyperparameter {param.name!r} needs a default value")
            hypers.append(_hyper_spec(param.name, annotation, param.default, where))
    if not inputs:
        raise TypeError(f"{where}: a merge method takes at least one input model")
    returns_annotation = _evaluate(signature.return_annotation, fn, where)
    returns = space_of_annotation(returns_annotation) if returns_annotation is not signature.empty else None
    if returns is None:
        if any(i.space is SAME for i in inputs):
            returns = SAME
        else:
            raise TypeError(f"{where}: annotate the return value with Weight, Delta or Same")
    if returns is SAME and not any(i.space is SAME for i in inputs):
        raise TypeError(f"{where}: returns Same but no input is annotated Same")
    if stored_inputs and "dtype" not in context and not takes_kwargs:
        raise TypeError(f"{where}: stored_inputs=True needs the 'dtype' context parameter to convert its inputs")
    if coefficients is not None and not elementwise:
        raise TypeError(f"{where}: coefficients make it a linear combination of its inputs, which is "
                        f"elementwise: add elementwise=True")
    if lazy_inputs and (elementwise or stored_inputs):
        raise TypeError(f"{where}: lazy_inputs=True is for methods that read whole tensors in passes; an elementwise "
                        f"method is already fed chunks, and lazy inputs come in the work dtype (drop "
                        f"{'elementwise' if elementwise else 'stored_inputs'}=True)")
    method = MergeMethod(name=name, function=fn, inputs=tuple(inputs), hypers=tuple(hypers),
                         returns=returns, context=frozenset(context), takes_kwargs=takes_kwargs,
                         elementwise=elementwise, doc=inspect.cleandoc(fn.__doc__ or ""),
                         stored_inputs=stored_inputs, coefficients=coefficients, lazy_inputs=lazy_inputs)
    return method


def _evaluate(annotation: Any, fn: Callable[..., Any], where: str) -> Any:
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, getattr(fn, "__globals__", {}), {})  # noqa: S307 - the plugin's own annotation
    except Exception as error:
        raise TypeError(f"{where}: cannot evaluate annotation {annotation!r}: {error}") from None


def _hyper_spec(name: str, annotation: Any, default: Any, where: str) -> HyperSpec:
    if annotation is inspect.Parameter.empty:
        kind = type(default)
        if kind not in (float, int, bool, str):
            raise TypeError(f"{where}: annotate hyperparameter {name!r} (float, int, bool, str or tuple[float, ...])")
        return HyperSpec(name, kind, default)
    origin = typing.get_origin(annotation)
    if origin in (tuple, list, Sequence, typing.Sequence):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        element = args[0] if args else float
        if element not in (float, int):
            raise TypeError(f"{where}: per-model hyperparameter {name!r} must hold float or int")
        # a scalar default (``weight: tuple[float, ...] = 1.0``) is broadcast to every model, like a scalar value
        default = tuple(default) if isinstance(default, (list, tuple)) else default
        return HyperSpec(name, element, default, per_model=True)
    if annotation not in (float, int, bool, str):
        raise TypeError(f"{where}: hyperparameter {name!r} has unsupported type {annotation!r}; "
                        f"use float, int, bool, str or tuple[float, ...]")
    return HyperSpec(name, annotation, default)
