"""A mergekit configuration as a mecha recipe, with the merge options its dtypes set.

A ``models:`` configuration is one merge over whole models. A ``slices:`` configuration makes each
output slice from its sources' layer ranges: every source is read through a rename
(``model "a" rename="model.layers.{8..15}.>model.layers.{0..7}."``) that keeps the slice's layers,
renumbered to their place in the output, plus the embeddings for the first slice and the other
non-layer keys (final norm, head) for the last, as mergekit takes them; the slices' merges provide
disjoint keys and ``linear`` of them joins them (a key present in one input is that input).

The output has the slices' layers together, whatever the depths of the models they come from (a
passthrough of 4 layers of one model and 3 of another makes 7): block values are named in the
output's architecture, specialized to the output's keys, as mecha specializes the merge itself
(and a model folder output's ``config.json`` gets that layer count).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mecha_core import KeySpec, ReadRecipe, RecipeNode, TensorInfo, get_plugins, model

from .config import MergekitConfig, Slice, Source, load_config
from .layout import GENERIC, ModelLayout, output_specs, read_layout
from .methods import JOINS, METHODS, OPTIONAL, REQUIRED, MethodMap
from .names import unknown
from .settings import encode, lookup

_SAVE_DTYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "float16": "fp16", "bfloat16": "bf16",
                "float32": "fp32"}


def read_config(path: Path) -> ReadRecipe:
    """The recipe-format reader: a mergekit YAML file as a recipe and its dtype options."""
    config = load_config(Path(path))
    return ReadRecipe(to_recipe(config), dtype_options(config))


def to_recipe(config: MergekitConfig) -> RecipeNode:
    method = METHODS.get(config.merge_method)
    if method is None:
        raise config.error(unknown("merge_method", config.merge_method, METHODS,
                                   " (mergekit methods mecha runs)"))
    _check_parameter_names(config, method)
    layouts: dict[str, ModelLayout] = {}

    def layout(name: str) -> ModelLayout:
        if name not in layouts:
            layouts[name] = read_layout(name, str(config.path))
        return layouts[name]

    nodes = _SliceBuilder(config, method, layout).build()
    if len(nodes) == 1:
        return nodes[0]
    return _method("linear")(*nodes)


def dtype_options(config: MergekitConfig) -> dict[str, Any]:
    """mergekit's dtype is the dtype it computes in, out_dtype the saved one (default: dtype, else the
    models' own); mecha's work and save dtypes."""
    options: dict[str, Any] = {}
    if config.dtype is not None:
        options["work_dtype"] = config.dtype
    saved = config.out_dtype or config.dtype
    if saved is None:
        first = next(iter(config.slices[0].sources)).model
        saved = read_layout(first, str(config.path)).common_float_dtype()
    if saved is not None:
        if saved not in _SAVE_DTYPES:
            raise config.error(f"out_dtype {saved} cannot be saved; use float16, bfloat16 or float32")
        options["save_dtype"] = _SAVE_DTYPES[saved]
    return options


def _check_parameter_names(config: MergekitConfig, method: MethodMap) -> None:
    allowed = method.parameter_names()
    scopes: list[tuple[str, Mapping[str, Any]]] = [("parameters", config.parameters)]
    for i, out_slice in enumerate(config.slices):
        scopes.append((f"slices[{i}].parameters", out_slice.parameters))
        for j, source in enumerate(out_slice.sources):
            where = f"slices[{i}].sources[{j}]" if config.uses_slices else f"models[{j}]"
            scopes.append((f"{where}.parameters", source.parameters))
    for where, scope in scopes:
        for name in scope:
            if name not in allowed:
                raise config.error(f"{where}: " + unknown("parameter", name, allowed,
                                                          f" for merge_method {config.merge_method}"))


def _method(name: str) -> Any:
    return get_plugins().merge_methods.get(name)


@dataclasses.dataclass
class _Input:
    """One model of a slice: its source, the recipe node reading it, and its input key per output key."""

    source: Source
    node: RecipeNode
    names: dict[str, str]  # output key -> the key read from this model


@dataclasses.dataclass
class _OutputSlice:
    """One output slice, placed: its sources and where its layers go in the output."""

    index: int
    slice: Slice
    sources: list[Source]
    offset: int  # its first layer in the output
    length: int  # how many layers it makes
    positions: dict[str, float]  # output key -> t (its place in the slice's layers, for gradients)


class _SliceBuilder:
    def __init__(self, config: MergekitConfig, method: MethodMap, layout: Any) -> None:
        self.config = config
        self.method = method
        self.layout = layout
        self.specs: dict[str, KeySpec] = {}  # every output key's group in the output's architecture
        self.dtypes: dict[str, str] = {}  # output key -> the dtype of the key it is read from
        self.arch = GENERIC

    def build(self) -> list[RecipeNode]:
        """The merge of every output slice. The slices are placed first: the output, whose layer count
        is theirs together, is specialized to its own keys before any value is named by block."""
        placed, tensors, offset = [], {}, 0
        for index, out_slice in enumerate(self.config.slices):
            item, table = self._place(out_slice, index, offset)
            placed.append(item)
            tensors.update(table)
            offset += item.length
        first = self.layout(placed[0].sources[0].model)
        self.arch = first.arch
        where = f"{self.config.path}: the output ({offset} layers)"
        self.specs = output_specs(first.arch, tensors, where)
        self.dtypes = {key: info.torch_dtype_name for key, info in tensors.items()}
        return [self._build(item) for item in placed]

    def _place(self, out_slice: Slice, index: int, offset: int) -> tuple[_OutputSlice, dict[str, TensorInfo]]:
        """Where a slice's layers go, and the output keys it makes with the tensors they are read from."""
        config = self.config
        base_name = out_slice.base_model or config.base_model
        sources = list(out_slice.sources)
        if not config.uses_slices and base_name is not None and all(s.model != base_name for s in sources):
            sources.append(Source(base_name, {}))  # mergekit adds the base as one more model
        for number, source in enumerate(sources):
            self._check_range(source, index, number)
        first = self.layout(sources[0].model)
        if config.uses_slices:
            start, stop = sources[0].layer_range  # type: ignore[misc]
            length = stop - start
        else:
            start, length = 0, first.num_layers
        positions, table = self._positions(first, start, length, offset, index)
        return _OutputSlice(index, out_slice, sources, offset, length, positions), table

    def _check_range(self, source: Source, index: int, number: int) -> None:
        if source.layer_range is None:
            return
        layout = self.layout(source.model)
        start, stop = source.layer_range
        if stop > layout.num_layers:
            raise self.config.error(f"slices[{index}].sources[{number}]: model {source.model} has "
                                    f"{layout.num_layers} layers (0..{layout.num_layers - 1}); layer_range "
                                    f"[{start}, {stop}] asks for layers up to {stop - 1}")

    def _build(self, item: _OutputSlice) -> RecipeNode:
        """The merge of one placed output slice."""
        where = f"slices[{item.index}]" if self.config.uses_slices else "models"
        inputs = [self._input(source, item) for source in item.sources]
        base_name = item.slice.base_model or self.config.base_model
        return self._merge(inputs, base_name, item.positions, where, item.slice)

    def _positions(self, first: ModelLayout, start: int, length: int, offset: int,
                   index: int) -> tuple[dict[str, float], dict[str, TensorInfo]]:
        """Output key -> t, for the keys this slice makes (named after the first source's keys), and
        output key -> the first source's tensor it is read from."""
        last = len(self.config.slices) - 1
        with_pre = not self.config.uses_slices or index == 0
        with_post = not self.config.uses_slices or index == last
        outer = first.outer_keys()
        positions: dict[str, float] = {k: 0.0 for k in outer if _is_pre(k) and with_pre}
        table = {k: first.tensors[k] for k in positions}
        for j in range(length):
            t = j / (length - 1) if length > 1 else 1.0
            for key in first.layer_keys(start + j):
                renamed = _renumber(key, first.layer_prefix, offset + j)
                positions[renamed] = t
                table[renamed] = first.tensors[key]
        for key in outer:
            if not _is_pre(key) and with_post:
                positions[key] = 0.0
                table[key] = first.tensors[key]
        return positions, table

    def _input(self, source: Source, item: _OutputSlice) -> _Input:
        layout = self.layout(source.model)
        if not self.config.uses_slices:
            return _Input(source, model(source.model), {k: k for k in item.positions})
        start, offset, length = source.layer_range[0], item.offset, item.length  # type: ignore[index]
        prefix = layout.layer_prefix
        rules = [f"{prefix}{{{start}..{start + length - 1}}}.>{prefix}{{{offset}..{offset + length - 1}}}."]
        rules += [k for k in layout.outer_keys() if k in item.positions]
        names = {}
        for key in item.positions:
            layer = layout.layer_of(key)
            names[key] = key if layer is None else _renumber(key, prefix, layer - offset + start)
        return _Input(source, model(source.model, rename=", ".join(rules)), names)

    def _merge(self, inputs: list[_Input], base_name: str | None, positions: Mapping[str, float], where: str,
               out_slice: Slice) -> RecipeNode:
        method, config = self.method, self.config
        base = next((i for i in inputs if i.source.model == base_name), None) if base_name else None
        if method.base == REQUIRED and base is None:
            raise config.error(f"merge_method {config.merge_method} needs base_model (one of the models of {where})")
        if base_name is not None and base is None and method.base != JOINS:
            raise config.error(f"{where}: base_model {base_name!r} is not among the sources")
        others = [i for i in inputs if i is not base] if method.base != JOINS else inputs
        count = len(others)
        if count < method.min_models or (method.max_models is not None and count > method.max_models):
            bound, wanted = ((method.min_models, "exactly") if method.max_models == method.min_models
                             else (method.max_models, "at most") if method.max_models is not None
                             else (method.min_models, "at least"))
            noun = "model" if bound == 1 else "models"
            kind = f"{noun} besides the base" if method.base != JOINS else noun
            raise config.error(f"{where}: merge_method {config.merge_method} takes {wanted} {bound} {kind}, "
                               f"got {count}")
        if not method.mecha:  # passthrough
            self._check_fixed(out_slice, positions, others)
            return others[0].node
        hypers = self._hypers(others, positions, out_slice)
        function = _method(method.mecha)
        if method.base == REQUIRED:
            assert base is not None
            return function(base.node, *(i.node for i in others), **hypers)
        if method.base == OPTIONAL and base is not None:
            subtract, add_difference = _method("subtract"), _method("add_difference")
            deltas = [subtract(i.node, base.node) for i in others]
            return add_difference(base.node, function(*deltas, **hypers), alpha=1.0)
        return function(*(i.node for i in others), **hypers)

    def _scopes(self, out_slice: Slice, source: Source | None) -> list[Mapping[str, Any]]:
        own = [source.parameters] if source is not None else []
        return own + [out_slice.parameters, self.config.parameters]

    def _merged_keys(self, positions: Mapping[str, float]) -> list[str]:
        return [key for key in positions if self.specs[key].merged
                and self.dtypes[key] in ("float16", "bfloat16", "float32", "float64")]

    def _hypers(self, others: Sequence[_Input], positions: Mapping[str, float], out_slice: Slice) -> dict[str, Any]:
        method = self.method
        keys = self._merged_keys(positions)
        specs = {k: self.specs[k] for k in keys}

        def prefix_of(spec: KeySpec) -> str:
            return f"{self.arch}_{spec.component}"

        def encoded(values: dict[str, Any], what: str) -> Any:
            return encode(values, specs, prefix_of, f"{self.config.path}: {what}")  # type: ignore[arg-type]

        hypers: dict[str, Any] = dict(method.fixed)
        for name, (mecha_name, default) in method.per_model.items():
            per_model = []
            for item in others:
                value = lookup(name, self._scopes(out_slice, item.source), default)
                values = {k: value(item.names[k], positions[k]) for k in keys}
                if any(v is None for v in values.values()):
                    raise self.config.error(f"parameter {name} is required for {item.source.model} "
                                            f"(merge_method {self.config.merge_method})")
                per_model.append(encoded(values, f"parameter {name} of {item.source.model}"))
            hypers[mecha_name] = per_model
        for name, (mecha_name, default) in method.shared.items():
            value = lookup(name, self._scopes(out_slice, None), default)
            values = {k: value(k, positions[k]) for k in keys}
            if any(v is None for v in values.values()):
                raise self.config.error(f"parameter {name} is required (merge_method {self.config.merge_method})")
            if name == "t":  # slerp at t is nuslerp with the weights 1 - t and t
                hypers["weight"] = [encoded({k: 1 - v for k, v in values.items()}, "parameter t"),
                                    encoded(values, "parameter t")]
            elif isinstance(default, (bool, int)):
                hypers[mecha_name] = self._constant(name, values)
            else:
                hypers[mecha_name] = encoded({k: float(v) for k, v in values.items()}, f"parameter {name}")
        self._check_fixed(out_slice, positions, others)
        return hypers

    def _constant(self, name: str, values: Mapping[str, Any]) -> Any:
        distinct = set(values.values())
        if len(distinct) > 1:
            raise self.config.error(f"parameter {name} must have one value for every tensor here, got "
                                    f"{sorted(distinct)}")
        return distinct.pop()

    def _check_fixed(self, out_slice: Slice, positions: Mapping[str, float], others: Sequence[_Input]) -> None:
        """Parameters mecha's method lacks: accepted only at the value that changes nothing."""
        for name, neutral in self.method.must_be.items():
            for item in others:
                value = lookup(name, self._scopes(out_slice, item.source), neutral)
                for key in positions:
                    if value(item.names[key], positions[key]) != neutral:
                        shown = "not given" if neutral is None else neutral
                        raise self.config.error(
                            f"parameter {name} of merge_method {self.config.merge_method} is not supported by "
                            f"mecha except at its neutral value ({shown})")


def _is_pre(key: str) -> bool:
    """Whether a non-layer key comes before the layers (the embeddings), as mergekit's pre-weights."""
    return "embed" in key


def _renumber(key: str, prefix: str, layer: int) -> str:
    rest = key[len(prefix):].split(".", 1)[1]
    return f"{prefix}{layer}.{rest}"
