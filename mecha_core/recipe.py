"""Recipes: immutable trees of merge-method calls over models and named parameters.

A recipe is data. Building one checks what can be checked without reading a tensor: the number of
models each method takes, hyperparameter names and values, and merge spaces as far as they are known
(a file whose model type is not given is detected when the merge starts, and checked then).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import dtypes
from .errors import MechaError, ModelFileError, RecipeError, RecipeSyntaxError, unknown
from .key_rename import parse_rules
from .method_spec import HyperSpec, MethodSpec, describe_mismatch
from .plugins import Plugins, get_plugins
from .sharded_files import is_model_folder
from .spaces import SAME, MergeSpace
from .traversal import post_order

Number = int | float
HyperValue = Any  # Number | bool | str | dict[str, Number] | tuple[Number | dict, ...]
NODE_OPTIONS = frozenset({"device", "dtype"})  # keywords of a call that are not hyperparameters
REPR_DEPTH = 6  # calls shown inside a call's repr


class RecipeNode:
    """A node of a recipe tree.

    Nodes are values: two nodes are equal when they are the same tree (same calls, hyperparameters,
    models), shared or not. A node's hash is computed once, when it is made, from its own fields and
    its children's hashes, so hashing any recipe costs nothing, and equality compares two trees
    without recursion, each pair of sub-trees once (a recipe whose sub-recipes are shared compares in
    time linear in its distinct nodes, however deep). The fields that make a node's identity are
    never changed after construction.
    """

    _hash: int
    _fields: tuple[Any, ...]  # the node's identity, its children aside

    def _settle_identity(self, *fields: Any) -> None:
        self._fields = (type(self).__name__, *fields)
        self._hash = hash((self._fields, tuple(child._hash for child in self.children)))

    @property
    def space(self) -> MergeSpace | None:
        """The merge space of this node's tensors, or None while unknown."""
        return self.space_in(None)

    def space_in(self, plugins: Plugins | None) -> MergeSpace | None:
        """:attr:`space`, with model types looked up in `plugins` (None: the plugin set in use)."""
        raise NotImplementedError

    @property
    def children(self) -> tuple[RecipeNode, ...]:
        return ()

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, RecipeNode):
            return NotImplemented
        return _same_tree(self, other)

    def __hash__(self) -> int:
        return self._hash

    def parameters(self) -> dict[str, ParameterNode]:
        """The parameters (template holes) of this recipe, by name."""
        return {n.name: n for n in walk(self) if isinstance(n, ParameterNode)}

    def models(self) -> list[ModelNode]:
        """The model leaves, in depth-first order, each once."""
        return [n for n in walk(self) if isinstance(n, ModelNode)]


def _same_tree(left: RecipeNode, right: RecipeNode) -> bool:
    """Whether two recipes are the same tree: pairs of nodes compared from an explicit stack, a pair
    met again (a shared sub-tree) not compared twice, and different hashes telling a difference at once."""
    compared: set[tuple[int, int]] = set()
    stack = [(left, right)]
    while stack:
        a, b = stack.pop()
        if a is b or (id(a), id(b)) in compared:
            continue
        if a._hash != b._hash or a._fields != b._fields or len(a.children) != len(b.children):
            return False
        compared.add((id(a), id(b)))
        stack.extend(zip(a.children, b.children))
    return True


class ModelNode(RecipeNode):
    """A model: a file path or name, or an in-memory state dict."""

    def __init__(self, source: str | os.PathLike[str] | Mapping[str, Any], arch: str | None = None,
                 type: str | None = None, rename: str | None = None) -> None:  # noqa: A002 - sd-mecha's spelling
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        if not isinstance(source, (str, Mapping)):
            raise RecipeError(f"a model is a path, a name or a dict of tensors, not {type_name(source)}")
        if isinstance(source, str) and not source.strip():
            raise RecipeError("a model path cannot be empty")
        self.source = source
        self.arch = arch or None
        self.type = type or None
        if rename is not None:
            parse_rules(rename)  # refused here, where the recipe is written, not when the merge starts
        self.rename = rename or None  # see key_rename: which keys this input provides, under which names
        self._settle_identity(id(source) if isinstance(source, Mapping) else source, self.arch, self.type, self.rename)

    @property
    def is_dict(self) -> bool:
        return isinstance(self.source, Mapping)

    @property
    def label(self) -> str:
        return "<in-memory model>" if self.is_dict else str(self.source)

    def space_in(self, plugins: Plugins | None) -> MergeSpace | None:
        if self.type is None:
            return MergeSpace.WEIGHT if self.is_dict else None
        return (plugins or get_plugins()).model_types.get(self.type).space

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in (("arch", self.arch), ("type", self.type), ("rename", self.rename))
                        if v)
        return f"model({self.label!r}{extra})"


class ParameterNode(RecipeNode):
    """A named hole in a recipe template, filled by :func:`compose`."""

    def __init__(self, name: str, space: MergeSpace | str = MergeSpace.WEIGHT) -> None:
        if not isinstance(name, str) or not name or any(c in name for c in ' "\n&='):
            raise RecipeError(f"invalid parameter name {name!r}")
        if not isinstance(space, (MergeSpace, str)):
            raise RecipeError(f"parameter {name!r}: the space is 'weight' or 'delta', not {space!r}")
        self.name = name
        self._space = space if isinstance(space, MergeSpace) else MergeSpace.parse(space)
        self._settle_identity(self.name, self._space)

    @property
    def space(self) -> MergeSpace:
        return self._space

    def space_in(self, plugins: Plugins | None) -> MergeSpace:
        return self._space

    def __repr__(self) -> str:
        return f"parameter({self.name!r}, {self._space.value!r})"


@dataclasses.dataclass(frozen=True)
class RecipeLine:
    """A line of a recipe file: which file (or ``None`` for text), its number and its text."""

    source: str | None
    number: int
    text: str

    def error(self, error: MechaError) -> RecipeSyntaxError:
        """`error`, told as happening on this line."""
        return RecipeSyntaxError(str(error), line_number=self.number, line=self.text, source=self.source)


class MergeNode(RecipeNode):
    """A call of a merge method on input nodes with hyperparameters."""

    def __init__(self, method: MethodSpec, inputs: tuple[RecipeNode, ...], hypers: dict[str, HyperValue],
                 space: MergeSpace | None, device: str | None = None, dtype: str | None = None) -> None:
        self.method = method
        self.inputs = inputs
        self.hypers = hypers
        self._space = space
        self.device = device
        self.dtype = dtype
        # where a parsed recipe wrote this call, for errors found later (when the models are opened);
        # not part of the node's identity
        self.origin: RecipeLine | None = None
        self._settle_identity(method.name, _freeze(hypers), device, dtype)

    @classmethod
    def build(cls, method: MethodSpec, inputs: tuple[RecipeNode, ...], hypers: Mapping[str, Any], *,
              device: str | None = None, dtype: Any = None, plugins: Plugins | None = None) -> MergeNode:
        """Check arity, hyperparameters and spaces, then make the node. The inputs' model types are
        looked up in `plugins` (None: the plugin set in use)."""
        _check_arity(method, inputs)
        values: dict[str, HyperValue] = {}
        for name, value in hypers.items():
            if name in NODE_OPTIONS:
                raise RecipeError(f"merge method {method.name!r}: {name!r} was given twice")
            values[name] = normalize_hyper(method, method.hyper(name), value, len(inputs))
        for spec in method.hypers:
            if spec.name not in values:
                values[spec.name] = normalize_hyper(method, spec, spec.default, len(inputs)) if spec.default is not None else None
        space = infer_space(method, inputs, plugins=plugins)
        dtype_name = _work_dtype(method, dtype)
        return cls(method, inputs, values, space, device=str(device) if device is not None else None,
                   dtype=dtype_name)

    @property
    def space(self) -> MergeSpace | None:
        return self._space

    def space_in(self, plugins: Plugins | None) -> MergeSpace | None:
        return self._space

    @property
    def children(self) -> tuple[RecipeNode, ...]:
        return self.inputs

    def replace_inputs(self, inputs: tuple[RecipeNode, ...], plugins: Plugins | None = None) -> MergeNode:
        """The same call on other inputs, re-checked (model types looked up in `plugins`)."""
        hypers = {k: v for k, v in self.hypers.items() if v is not None}
        return MergeNode.build(self.method, inputs, hypers, device=self.device, dtype=self.dtype, plugins=plugins)

    def __repr__(self) -> str:
        return self._shown(REPR_DEPTH)

    def _shown(self, depth: int) -> str:
        """The call as Python, its inputs shown `depth` calls deep (a deep or widely shared recipe
        would otherwise print without end, or recurse past Python's limit)."""
        if depth == 0:
            return f"{self.method.name}(...)"
        args = [i._shown(depth - 1) if isinstance(i, MergeNode) else repr(i) for i in self.inputs]
        args += [f"{k}={v!r}" for k, v in self.hypers.items()]
        args += [f"{k}={v!r}" for k, v in (("device", self.device), ("dtype", self.dtype)) if v]
        return f"{self.method.name}({', '.join(args)})"


def _work_dtype(method: MethodSpec, dtype: Any) -> str | None:
    """The torch-style name of a call's ``dtype=`` (a spelling such as ``fp16``, or a torch dtype)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        return dtypes.parse(dtype, dtypes.WORK_DTYPES, "work dtype")
    name = dtypes.name_of(dtype)
    if name not in dtypes.WORK_DTYPES:
        raise RecipeError(f"merge method {method.name!r}: dtype {dtype!r} is not a work dtype; expected one of "
                          f"{', '.join(dtypes.WORK_DTYPES)}")
    return name


def type_name(value: object) -> str:
    return type(value).__name__


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _check_arity(method: MethodSpec, inputs: Sequence[RecipeNode]) -> None:
    fixed = sum(1 for i in method.inputs if not i.variadic)
    if method.variadic is not None:
        if len(inputs) < max(fixed, 1):
            raise RecipeError(f"merge method {method.name!r} takes at least {max(fixed, 1)} models, "
                              f"got {len(inputs)}: {method.signature()}")
    elif len(inputs) != fixed:
        raise RecipeError(f"merge method {method.name!r} takes {fixed} model{'s' if fixed != 1 else ''}, "
                          f"got {len(inputs)}: {method.signature()}")


def input_specs(method: MethodSpec, count: int) -> list[tuple[str, Any]]:
    """(name, declared space) of each of `count` inputs, expanding the variadic parameter."""
    specs = []
    for spec in method.inputs:
        if spec.variadic:
            extra = count - (len(method.inputs) - 1)
            specs.extend((f"{spec.name}[{k}]", spec.space) for k in range(extra))
        else:
            specs.append((spec.name, spec.space))
    return specs


def infer_space(method: MethodSpec, inputs: Sequence[RecipeNode],
                spaces: Sequence[MergeSpace | None] | None = None, plugins: Plugins | None = None) -> MergeSpace | None:
    """The result space of a call, refusing inputs in the wrong space (unknown spaces pass for now).
    `spaces` defaults to the inputs' own, their model types looked up in `plugins`."""
    if spaces is None:
        spaces = [node.space_in(plugins) for node in inputs]
    same: MergeSpace | None = None
    same_from = ""
    for (name, declared), node, space in zip(input_specs(method, len(inputs)), inputs, spaces):
        if space is None:
            continue
        where = f" ({node.label})" if isinstance(node, ModelNode) else ""
        if declared is SAME:
            if same is None:
                same, same_from = space, name
            elif space != same:
                raise RecipeError(f"merge method {method.name!r}: inputs {same_from!r} and {name!r}{where} must "
                                  f"share one merge space, but one is in {same.value} space and the other in "
                                  f"{space.value} space")
        elif space != declared:
            raise RecipeError(describe_mismatch(method, name, declared, space) + where)
    if method.returns is SAME:
        return same
    return method.returns


def normalize_hyper(method: MethodSpec, spec: HyperSpec, value: Any, input_count: int) -> HyperValue:
    """Check a hyperparameter value against its declaration and return it in canonical form."""
    where = f"merge method {method.name!r}, hyperparameter {spec.name!r}"
    if spec.per_model:
        variadic = method.variadic is not None
        expected = input_count - (len(method.inputs) - 1) if variadic else input_count
        if isinstance(value, (list, tuple)):
            if len(value) != expected:
                raise RecipeError(f"{where}: expected {expected} values (one per model), got {len(value)}")
            return tuple(_scalar_or_dict(spec.kind, v, where) for v in value)
        return (_scalar_or_dict(spec.kind, value, where),) * expected
    if spec.kind is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        return value
    if spec.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise RecipeError(f"{where}: expected true or false, got {value!r}")
    return _scalar_or_dict(spec.kind, value, where)


SEED = "seed"


def draw_random_seeds(root: RecipeNode) -> RecipeNode:
    """The recipe with each negative ``seed`` replaced by a drawn one: a negative seed asks for a random
    one, as in sd-mecha 0.0.x. A merge draws them before it starts and logs them; the recipe it stores in
    the output's metadata holds the seeds drawn, so the merge can be reproduced from it. The recipe
    itself keeps its negative seed (composing or saving it keeps it random)."""
    built: dict[int, RecipeNode] = {}
    for node in walk(root):
        if not isinstance(node, MergeNode):
            built[id(node)] = node
            continue
        inputs = tuple(built[id(i)] for i in node.inputs)
        seed = node.hypers.get(SEED)
        if isinstance(seed, int) and not isinstance(seed, bool) and seed < 0:
            hypers = {k: v for k, v in node.hypers.items() if v is not None}
            hypers[SEED] = _drawn_seed(node.method, seed)
            drawn = MergeNode.build(node.method, inputs, hypers, device=node.device, dtype=node.dtype)
            drawn.origin = node.origin
            built[id(node)] = drawn
        else:
            built[id(node)] = node if all(a is b for a, b in zip(inputs, node.inputs)) else node.replace_inputs(inputs)
    return built[id(root)]


def _drawn_seed(method: MergeMethod, given: int) -> int:
    import logging
    import secrets
    seed = secrets.randbelow(2**31)
    logging.getLogger("mecha").warning("%s: seed=%d drew seed=%d (stored in the output's recipe, so the merge "
                                       "can be reproduced)", method.name, given, seed)
    return seed


def _scalar_or_dict(kind: type, value: Any, where: str) -> HyperValue:
    if isinstance(value, bool):
        return kind(value)
    if isinstance(value, (int, float)):
        _check_finite(value, where)
        return kind(value) if kind is float else value
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RecipeError(f"{where}: a block/class dict maps names to numbers; got {k!r}: {v!r}")
            _check_finite(v, f"{where}, {k!r}")
        return dict(value)
    raise RecipeError(f"{where}: expected a number or a block/class dict, got {type_name(value)} {value!r}")


def _check_finite(value: int | float, where: str) -> None:
    """Refuse NaN, inf and numbers beyond float range: they would poison every key they touch."""
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    if not finite:
        raise RecipeError(f"{where}: expected a finite number, got {value!r}")


def as_node(value: Any) -> RecipeNode:
    """A recipe node from a node, a path or model name, or a state dict."""
    if isinstance(value, RecipeNode):
        return value
    if isinstance(value, (str, os.PathLike, Mapping)):
        return ModelNode(value)
    raise RecipeError(f"expected a model (path, name or state dict) or a recipe, got {type_name(value)} {value!r}")


def model(source: str | os.PathLike[str] | Mapping[str, Any], arch: str | None = None,
          type: str | None = None, rename: str | None = None) -> ModelNode:  # noqa: A002 - sd-mecha's spelling
    """A model input: a file path, a name found in the models folders, or a state dict.

    `arch` and `type` are detected from the file's header when not given. `rename` reads some of its
    keys under other names and leaves the rest out (``"model.layers.{8..15}.>model.layers.{0..7}."``;
    see ``mecha_core.key_rename``).
    """
    return ModelNode(source, arch, type, rename)


def parameter(name: str, space: str | MergeSpace = "weight") -> ParameterNode:
    """A named hole in a recipe template; :func:`compose` fills it with a model or a recipe."""
    return ParameterNode(name, space)


def walk(root: RecipeNode) -> Iterator[RecipeNode]:
    """Every distinct node of a tree (by identity), children before parents, in input order."""
    return post_order(root, _children)


def _children(node: RecipeNode) -> tuple[RecipeNode, ...]:
    return node.children


def transform(root: RecipeNode, leaf: Callable[[RecipeNode], RecipeNode],
              plugins: Plugins | None = None) -> RecipeNode:
    """Rebuild a tree with each leaf replaced by ``leaf(node)``, keeping shared sub-trees shared; the
    calls rebuilt are re-checked with model types looked up in `plugins`."""
    built: dict[int, RecipeNode] = {}
    for node in walk(root):
        if isinstance(node, MergeNode):
            inputs = tuple(built[id(i)] for i in node.inputs)
            same = all(a is b for a, b in zip(inputs, node.inputs))
            built[id(node)] = node if same else node.replace_inputs(inputs, plugins)
        else:
            built[id(node)] = leaf(node)
    return built[id(root)]


def compose(recipe: RecipeNode, **values: Any) -> RecipeNode:
    """Fill a template's parameters with models (paths, names, dicts) or other recipes.

    Parameters not named stay parameters. A value in the wrong merge space is refused.
    """
    holes = recipe.parameters()
    for name in values:
        if name not in holes:
            raise RecipeError(unknown("recipe parameter", name, holes))
    filled = {name: as_node(value) for name, value in values.items()}
    for name, node in filled.items():
        if node.space is not None and node.space != holes[name].space:
            raise RecipeError(f"parameter {name!r} is in {holes[name].space.value} space but the value given "
                              f"is in {node.space.value} space")

    def fill(node: RecipeNode) -> RecipeNode:
        if isinstance(node, ParameterNode) and node.name in filled:
            return filled[node.name]
        return node

    return transform(recipe, fill)


def resolve_model_path(source: str, models_dirs: Sequence[str | os.PathLike[str]]) -> Path:
    """Where a model named in a recipe is: the path itself, or a name under a models folder.

    ``.safetensors`` is appended to a name without a suffix. A model folder (holding a shard index or
    a ``model.safetensors``) is a model too. The error lists every place tried.
    """
    candidates = [Path(source)]
    if not Path(source).suffix:
        candidates.append(Path(source + ".safetensors"))
    tried = []
    for candidate in candidates:
        if candidate.is_absolute():
            places = [candidate]
        else:
            places = [candidate] + [Path(d) / candidate for d in models_dirs]
        for place in places:
            tried.append(str(place))
            if place.is_file() or is_model_folder(place):
                return place
    where = "; tried " + ", ".join(dict.fromkeys(tried))
    if not models_dirs and not Path(source).is_absolute():
        where += " (no models folder is set: use --models-dir, MECHA_MODELS_DIR or models_dirs in the config)"
    raise ModelFileError(f"model {source!r} not found{where}")
