"""``explain()``: what a merge will do, from the headers alone, before it runs.

Merge users get ratios backwards, lose track of what a nested recipe does to each block, and learn
only after the merge that a key was copied instead of merged. Everything needed to show it is known
before a tensor is read: :func:`mecha_core.planning.plan_merge` opens only headers and decides every
key; methods that are linear combinations of their inputs declare their ``coefficients``, so each
input model's share of every block follows by composing them down the tree. A method without them
(ties, a rotation...) is not linear: the share stops there, and that node counts as one term.

Nothing here reads tensor data: files whose data section is unreadable still explain.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import dtypes
from .architecture import KeySpec, generic_key_spec
from .errors import MechaError
from .merge import NONFINITE_MODES, _layout, _recipe, _recipe_text, _stored_recipe, make_options
from .output_file import encode_header, plan_layout
from .planning import KeyPlan, Leaf, MergePlan, Op, plan_merge, provides, usable_inputs
from .plugins import get_plugins
from .recipe import RecipeNode

NONFINITE_POLICY = {
    "warn": "a key whose result holds NaN/inf is written and named in a note",
    "fail": "a key whose result holds NaN/inf stops the merge; nothing is written",
    "skip": "an input holding NaN/inf at a key counts as missing that key",
    "ignore": "NaN/inf values are written without a word",
}
assert set(NONFINITE_POLICY) == set(NONFINITE_MODES)


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """One input model as its header describes it."""

    label: str  # A, B, C ... in recipe order; the names shares use
    file: str
    architecture: str
    type: str
    space: str
    dtypes: dict[str, int]  # stored dtype (torch name) -> number of tensors
    bytes: int  # the size of its tensors
    keys: int
    fallback: bool = False
    note: str = ""


@dataclasses.dataclass(frozen=True)
class ValueSpan:
    """A hyperparameter's value over consecutive blocks of a component (all of it when `blocks` is
    empty), or for one class of layers there when `class_` is set."""

    component: str
    blocks: tuple[str, ...]
    value: Any
    class_: str | None = None


@dataclasses.dataclass(frozen=True)
class RecipeStep:
    """A node of the recipe: a model (``model`` is its label) or a merge of earlier steps (`inputs`
    are their positions in :attr:`Explanation.recipe`) with its hyperparameters as they resolve (a
    number, or spans by component, block and class). Steps are flat, like the lines of a ``.mecha``
    file, so a recipe hundreds of merges deep converts to JSON without recursion."""

    model: str | None = None
    method: str | None = None
    hypers: dict[str, Any] = dataclasses.field(default_factory=dict)
    inputs: tuple[int, ...] = ()
    linear: bool = True


@dataclasses.dataclass(frozen=True)
class ComponentPlan:
    """What happens to the keys of one component (``ema``, ``vae``, ``unet``...)."""

    component: str
    merged: int = 0
    copied: dict[str, int] = dataclasses.field(default_factory=dict)  # model label -> keys copied from it
    dropped: int = 0  # by --drop
    left_out: int = 0  # no input provides them in the output's space


@dataclasses.dataclass(frozen=True)
class PlanSummary:
    """The plan's totals and the memory the scheduler will hold.

    `peak_memory` is the scheduler's own budget: every worker evaluates a key (a chunk of
    `chunk_elements` elements when the recipe is elementwise and the key larger, else the whole key)
    at `bytes_per_element` bytes an element, the `threads` largest of those at once, plus the output
    writer's staging buffers (`writer_buffers`). A whole key costs `whole_key_bytes_per_element`: less
    when ``lazy_inputs`` methods read models range by range (`lazy_methods`) instead of holding them."""

    components: list[ComponentPlan]
    bytes_read: int
    bytes_written: int
    output_dtypes: dict[str, int]  # torch dtype name -> number of tensors written
    threads: int
    chunk_elements: int
    bytes_per_element: int
    writer_buffers: int
    peak_memory: int
    whole_key_bytes_per_element: int
    lazy_methods: list[str]


@dataclasses.dataclass(frozen=True)
class Share:
    """Each term's effective coefficient over consecutive blocks of a component (all of it when
    `blocks` is empty), or for one class of layers there when `class_` is set."""

    component: str
    blocks: tuple[str, ...]
    coefficients: dict[str, float]  # term (a model label, or a nonlinear node) -> coefficient
    class_: str | None = None


@dataclasses.dataclass(frozen=True)
class KeyShare:
    """A key whose share differs from its block's: some inputs lack it, or it belongs to several
    blocks (its hyperparameters are the mean of theirs)."""

    key: str
    coefficients: dict[str, float]
    reason: str


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Everything :func:`explain` finds; :meth:`to_dict` gives it as JSON-ready data."""

    architecture: str
    components: dict[str, list[str]]  # the merged components and their blocks, in network order
    models: list[ModelSummary]
    recipe: list[RecipeStep]  # each node once, inputs first: the last is the recipe's result
    plan: PlanSummary
    terms: list[str]  # the model labels, then the nonlinear nodes where shares stop
    stops: list[str]  # the nonlinear nodes where shares stop, named by their call
    shares: list[Share]
    key_shares: list[KeyShare]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def block_series(self) -> dict[str, tuple[list[str], dict[str, list[float]]]]:
        """Per component with blocks: the blocks in network order, and each term's share on each."""
        series: dict[str, tuple[list[str], dict[str, list[float]]]] = {}
        for share in self.shares:
            if share.class_ is not None or not share.blocks:
                continue
            blocks, values = series.setdefault(share.component, ([], {t: [] for t in self.terms}))
            for block in share.blocks:
                blocks.append(block)
                for term in self.terms:
                    values[term].append(share.coefficients.get(term, 0.0))
        for component, (blocks, values) in list(series.items()):
            series[component] = (blocks, {t: v for t, v in values.items() if any(v)})
        return series


def explain(recipe: RecipeNode | str | os.PathLike[str], *, store_model_paths: bool = False,
            **options: Any) -> Explanation:
    """What merging `recipe` would do, read from the models' headers only.

    `options` are :func:`mecha_core.merge`'s (``models_dir``, ``threads``, ``fallback_model``,
    ``drop``, ``save_dtype``, ``memory_budget``...): the plan is the one that merge would follow.
    """
    plugins = options.get("plugins") or get_plugins()
    node = _recipe(recipe, plugins)
    merge_options = make_options(**options)
    plan = plan_merge(node, merge_options, plugins)
    try:
        return _Explainer(node, plan, store_model_paths).explanation()
    finally:
        plan.close()


class _Explainer:
    def __init__(self, node: RecipeNode, plan: MergePlan, store_model_paths: bool) -> None:
        self.node = node
        self.plan = plan
        self.store_model_paths = store_model_paths
        self.architecture = plan.architecture
        self.ops = _post_order(plan.root)
        leaves = plan.leaves + ([plan.fallback] if plan.fallback else [])
        self.identities = {id(leaf): _identity(leaf) for leaf in leaves}
        # one label per model: a file named twice in the recipe is one model, whose shares add up
        self.labels: dict[Any, str] = {}
        for leaf in plan.leaves:
            self.labels.setdefault(self._identity(leaf), _letters(len(self.labels)))
        self.leaf_ops = [op for op in self.ops if op.leaf is not None]
        self.leaf_label = {id(op): self.labels[self._identity(op.leaf)] for op in self.leaf_ops}  # type: ignore[arg-type]
        self.call_names = self._call_names()

    def explanation(self) -> Explanation:
        shares, key_shares, reached = self._shares()
        stops = [self.call_names[id(op)] for op in self.ops if op.leaf is None and self.call_names[id(op)] in reached]
        terms = list(self.labels.values()) + stops
        return Explanation(
            architecture=self.architecture.name,
            components={name: [b for b in blocks if b] for name, blocks, _ in self._components()},
            models=self._models(),
            recipe=self._steps(),
            plan=self._plan_summary(),
            terms=terms,
            stops=stops,
            shares=shares,
            key_shares=key_shares,
            warnings=self._warnings(),
        )

    def _identity(self, leaf: Leaf) -> tuple[Any, ...]:
        return self.identities[id(leaf)]

    # the recipe -------------------------------------------------------------------------------
    def _call_names(self) -> dict[int, str]:
        """Each node as a call over model labels (``ties_merge(A, B, C)``), shortened when deep."""
        names: dict[int, str] = {}
        taken: set[str] = set(self.labels.values())
        for op in self.ops:
            if op.leaf is not None:
                names[id(op)] = self.leaf_label[id(op)]
                continue
            assert op.method is not None
            inner = ", ".join(names[id(i)] for i in op.inputs)
            name = f"{op.method.name}({inner if len(inner) <= 60 else '...'})"
            count = 1
            while name in taken:  # another call alike (other hyperparameters): number it
                count += 1
                name = f"{op.method.name}#{count}({inner if len(inner) <= 60 else '...'})"
            taken.add(name)
            names[id(op)] = name
        return names

    def _models(self) -> list[ModelSummary]:
        summaries = []
        for leaf in self._all_leaves():
            is_fallback = self._identity(leaf) not in self.labels
            label = self._label_of(leaf)
            counts: dict[str, int] = {}
            for info in leaf.file.tensors.values():
                counts[info.torch_dtype_name] = counts.get(info.torch_dtype_name, 0) + 1
            summaries.append(ModelSummary(
                label=label, file=leaf.label, architecture=leaf.arch_name, type=leaf.type.name,
                space=leaf.space.value, dtypes=dict(sorted(counts.items(), key=lambda item: -item[1])),
                bytes=sum(info.nbytes for info in leaf.file.tensors.values()), keys=len(leaf.file.tensors),
                fallback=is_fallback, note=leaf.note))
        return summaries

    def _steps(self) -> list[RecipeStep]:
        position: dict[int, int] = {}
        model_steps: dict[str, int] = {}  # a model named twice in the recipe is one step
        steps: list[RecipeStep] = []
        for op in self.ops:
            if op.leaf is not None:
                label = self.leaf_label[id(op)]
                if label not in model_steps:
                    model_steps[label] = len(steps)
                    steps.append(RecipeStep(model=label))
                position[id(op)] = model_steps[label]
                continue
            position[id(op)] = len(steps)
            assert op.method is not None
            hypers = {name: self._hyper_view(value) for name, value in op.hypers.items() if value is not None}
            steps.append(RecipeStep(method=op.method.name, hypers=hypers, inputs=tuple(position[id(i)] for i in op.inputs),
                                    linear=op.method.coefficients is not None))
        return steps

    def _hyper_view(self, value: Any) -> Any:
        """A number as it is; a block/class dict as the values it takes, block by block."""
        if isinstance(value, tuple):
            return [self._hyper_view(v) for v in value]
        if not isinstance(value, Mapping):
            return value
        from .hyper import resolve
        spans: list[ValueSpan] = []
        for component, blocks, classes in self._components():
            for values, block_run, class_ in self._runs(component, blocks, classes,
                                                        lambda spec: resolve(value, self.architecture, spec)):
                spans.append(ValueSpan(component, block_run, values, class_))
        return spans

    # per component, block and class -----------------------------------------------------------
    def _components(self) -> list[tuple[str, tuple[str, ...], dict[str, set[str]]]]:
        """The merged components with their blocks in network order ("" for the keys in no block,
        last), and for each class the blocks holding it."""
        found: dict[str, dict[str, set[str]]] = {}
        outside: set[str] = set()  # components with keys in no block
        for key in self.plan.keys:
            if key.merge:
                classes = found.setdefault(key.spec.component, {})
                if key.spec.class_ is not None:
                    classes.setdefault(key.spec.class_, set()).update(key.spec.blocks or ("",))
                if not key.spec.blocks:
                    outside.add(key.spec.component)
        result = []
        for component in self.architecture.components:
            if component.name in found:
                order = component.blocks + (("",) if component.name in outside or not component.blocks else ())
                result.append((component.name, order, found[component.name]))
        return result

    def _runs(self, component: str, blocks: tuple[str, ...], classes: Mapping[str, set[str]],
              value_of: Any) -> list[tuple[Any, tuple[str, ...], str | None]]:
        """(value, consecutive blocks sharing it, class or None): the component's value block by
        block, then each class's value where it differs from its block's. The keys in no block
        come as a run of no blocks."""
        base = {b: value_of(_spec(component, b, None)) for b in blocks}
        runs = [(v, run, None) for v, run in _group(blocks, base, blocks)]
        for class_ in sorted(classes):
            where = [b for b in blocks if b in classes[class_]]
            values = {b: value_of(_spec(component, b, class_)) for b in where}
            differing = {b: v for b, v in values.items() if v != base[b]}
            for v, run in _group([b for b in where if b in differing], differing, where):
                runs.append((v, run, class_))
        return [(v, tuple(b for b in run if b), c) for v, run, c in runs]

    # shares ------------------------------------------------------------------------------------
    def _shares(self) -> tuple[list[Share], list[KeyShare], set[str]]:
        """The shares per component, block and class with every model present; then the keys whose
        share differs from their block's (and the terms reached, to name the stops)."""
        reached: set[str] = set()
        everyone: dict[int, bool] = {id(op): True for op in self.leaf_ops}
        shares = []
        for component, blocks, classes in self._components():
            def nominal(spec: KeySpec) -> tuple[tuple[str, float], ...]:
                return self._share(spec, "", dict(everyone), reached)
            for coefficients, run, class_ in self._runs(component, blocks, classes, nominal):
                shares.append(Share(component, run, dict(coefficients), class_))
        key_shares = []
        cache: dict[Any, tuple[tuple[str, float], ...]] = {}  # hyperparameters depend on these alone

        def nominal_of(spec: KeySpec) -> tuple[tuple[str, float], ...]:
            where = (spec.component, spec.blocks, spec.class_)
            if where not in cache:
                cache[where] = self._share(spec, "", dict(everyone), reached)
            return cache[where]

        for key in self.plan.keys:
            if not key.merge:
                continue
            spec = key.spec
            presence = tuple(key.name in op.leaf.source.keys() for op in self.leaf_ops)  # type: ignore[union-attr]
            if not all(presence):
                where = (spec.component, spec.blocks, spec.class_, presence)
                if where not in cache:
                    cache[where] = self._share(spec, key.name, {}, reached)
                if cache[where] != nominal_of(spec):
                    lacking = sorted({self.leaf_label[id(op)] for op, have in zip(self.leaf_ops, presence) if not have})
                    key_shares.append(KeyShare(key.name, dict(cache[where]), f"missing in {', '.join(lacking)}"))
                    continue
            if len(spec.blocks) > 1:
                rows = {nominal_of(_spec(spec.component, block, spec.class_)) for block in spec.blocks}
                if rows != {nominal_of(spec)}:
                    key_shares.append(KeyShare(key.name, dict(nominal_of(spec)),
                                               f"in {len(spec.blocks)} blocks: the mean of their values"))
        return shares, key_shares, reached

    def _share(self, spec: KeySpec, key: str, present: dict[int, bool],
               reached: set[str]) -> tuple[tuple[str, float], ...]:
        """Each term's coefficient in the recipe's value for a key of `spec` (`present` pre-filled
        with every model: as if all had it)."""
        from .scheduler import call_hypers
        values: dict[int, dict[str, float]] = {}
        for op in self.ops:
            if op.leaf is not None:
                values[id(op)] = {self.leaf_label[id(op)]: 1.0}
                continue
            assert op.method is not None
            positions = usable_inputs(op, key, present)
            if positions is None:
                delegate = next((i for i in op.inputs if i.space == op.space and provides(i, key, present)), None)
                values[id(op)] = values[id(delegate)] if delegate is not None else {}
                continue
            if op.method.coefficients is None:
                values[id(op)] = {self.call_names[id(op)]: 1.0}
                continue
            hypers = call_hypers(op, positions, self.architecture, spec)
            try:
                coefficients = [float(c) for c in op.method.coefficients(len(positions), **hypers)]
            except Exception as error:
                raise MechaError(f"merge method {op.method.name!r}: its coefficients failed: "
                                 f"{type(error).__name__}: {error}") from error
            combined: dict[str, float] = {}
            for position, coefficient in zip(positions, coefficients):
                for term, weight in values[id(op.inputs[position])].items():
                    combined[term] = combined.get(term, 0.0) + coefficient * weight
            values[id(op)] = combined
        result = values[id(self.plan.root)]
        reached.update(result)
        return tuple((term, _tidy(result[term])) for term in self.term_order if term in result)

    @functools.cached_property
    def term_order(self) -> list[str]:
        """The models in label order, then the nonlinear nodes, inputs first."""
        return list(self.labels.values()) + [self.call_names[id(op)] for op in self.ops if op.leaf is None]

    # the plan ----------------------------------------------------------------------------------
    def _plan_summary(self) -> PlanSummary:
        from .direct_writes import STAGE_BYTES, STAGES
        from .scheduler import KeyRunner, Sink, _chunk_step
        plan = self.plan
        options = plan.options
        components: dict[str, dict[str, Any]] = {}
        read: dict[Any, set[str]] = {}  # by model identity: the keys read from it
        whole_files: set[Any] = set()
        for key in plan.keys:
            known = key.name in self.architecture.key_specs
            entry = components.setdefault(key.spec.component if known else "unknown", {"merged": 0, "copied": {}})
            if key.merge:
                entry["merged"] += 1
                for op in self.leaf_ops:
                    self._note_read(op.leaf, key.name, read, whole_files)  # type: ignore[arg-type]
            else:
                assert key.copy_from is not None
                label = self._label_of(key.copy_from)
                entry["copied"][label] = entry["copied"].get(label, 0) + 1
                self._note_read(key.copy_from, key.name, read, whole_files)
        for component, reason in self._left_out():
            entry = components.setdefault(component, {"merged": 0, "copied": {}})
            entry[reason] = entry.get(reason, 0) + 1
        bytes_read = 0
        for leaf in self._all_leaves():
            if self._identity(leaf) in whole_files:
                bytes_read += sum(info.nbytes for info in leaf.file.tensors.values())
            else:
                bytes_read += sum(leaf.source.info(k).nbytes for k in read.get(self._identity(leaf), ()))  # type: ignore[union-attr]
        layout = _layout(plan)
        output_dtypes: dict[str, int] = {}
        for _, dtype_name, _ in layout:
            output_dtypes[dtype_name] = output_dtypes.get(dtype_name, 0) + 1
        placed = plan_layout(layout)
        header = encode_header(placed, self._metadata())
        bytes_written = len(header) + (placed[-1][4] if placed else 0)
        runner = KeyRunner(plan, Sink())
        whole = runner.per_element - 2 * runner.item * len(self._lazy_leaves())
        working = sorted((self._working_set(key, runner.chunk, runner.per_element, whole, _chunk_step)
                          for key in plan.keys), reverse=True)
        writer = (STAGES + options.threads) * STAGE_BYTES
        return PlanSummary(
            components=[ComponentPlan(name, e["merged"], e["copied"], e.get("dropped", 0), e.get("left_out", 0))
                        for name, e in components.items()],
            bytes_read=bytes_read, bytes_written=bytes_written,
            output_dtypes=dict(sorted(output_dtypes.items(), key=lambda item: -item[1])),
            threads=options.threads, chunk_elements=runner.chunk, bytes_per_element=runner.per_element,
            writer_buffers=writer, peak_memory=sum(working[:options.threads]) + writer,
            whole_key_bytes_per_element=whole,
            lazy_methods=sorted({op.method.name for op in self.ops if op.method is not None and op.method.lazy_inputs}))

    def _lazy_leaves(self) -> list[Op]:
        """The models only ``lazy_inputs`` methods take, from sources that read ranges: on a whole key,
        neither their values nor their converted copies are held (the scheduler's ``_lazy``)."""
        consumers: dict[int, list[Op]] = {}
        for op in self.ops:
            for child in op.inputs:
                consumers.setdefault(id(child), []).append(op)
        return [op for op in self.leaf_ops if getattr(op.leaf.source, "supports_ranges", False)  # type: ignore[union-attr]
                and consumers.get(id(op)) and all(c.method is not None and c.method.lazy_inputs
                                                  for c in consumers[id(op)])]

    def _working_set(self, key: KeyPlan, chunk: int, per_element: int, whole: int, chunk_step: Any) -> int:
        """The bytes a worker holds for one key: a chunk of it at `per_element`, or all of it at
        `whole`; a copied key is read whole and written as it is."""
        if not key.merge:
            return key.numel * dtypes.itemsize(dtypes.code_of(key.out_dtype))
        if key.chunkable and key.numel > chunk:
            return chunk_step(chunk, key) * per_element
        return key.numel * whole

    def _note_read(self, leaf: Leaf, key: str, read: dict[Any, set[str]], whole_files: set[Any]) -> None:
        """A model of the base type is read key by key; another type (a LoRA) reads its own
        tensors for the keys it provides, counted as its whole file."""
        assert leaf.source is not None
        if key not in leaf.source.keys():
            return
        if leaf.type.name == "base":
            read.setdefault(self._identity(leaf), set()).add(key)
        else:
            whole_files.add(self._identity(leaf))

    def _metadata(self) -> dict[str, str]:
        metadata = _stored_recipe(_recipe_text(self.node, self.store_model_paths))
        if self.plan.encoder is not None:
            metadata.update(self.plan.encoder.metadata)
        return metadata

    def _all_leaves(self) -> list[Leaf]:
        """Each model once (a file named twice in the recipe is opened twice, but read as one)."""
        leaves = self.plan.leaves + ([self.plan.fallback] if self.plan.fallback else [])
        unique: dict[Any, Leaf] = {}
        for leaf in leaves:
            unique.setdefault(self._identity(leaf), leaf)
        return list(unique.values())

    def _label_of(self, leaf: Leaf) -> str:
        return self.labels.get(self._identity(leaf), "fallback")

    def _left_out(self) -> Iterable[tuple[str, str]]:
        """(component, "dropped" or "left_out") for every input key the plan does not write."""
        from .planning import _dropped
        planned = {key.name for key in self.plan.keys}
        seen: set[str] = set()
        for leaf in self._all_leaves():
            for key in leaf.source.keys():  # type: ignore[union-attr]
                if key in planned or key in seen:
                    continue
                seen.add(key)
                spec = self.architecture.key_specs.get(key)
                component = spec.component if spec is not None else "unknown"
                if spec is None:  # as planning judges it
                    info = leaf.source.info(key)  # type: ignore[union-attr]
                    spec = generic_key_spec(key, info.shape, info.torch_dtype_name)
                dropped = _dropped(key, spec, self.plan.options.drop)
                yield component, "dropped" if dropped else "left_out"

    def _warnings(self) -> list[str]:
        plan = self.plan
        warnings = list(plan.notes)
        missing: dict[str, int] = {}
        for key in plan.keys:
            if not key.merge:
                continue
            for op in self.leaf_ops:
                if key.name not in op.leaf.source.keys():  # type: ignore[union-attr]
                    label = self.leaf_label[id(op)]
                    missing[label] = missing.get(label, 0) + 1
        for label, count in missing.items():
            warnings.append(f"{label} lacks {count} of the merged keys: the recipe merges them without it")
        copied = [key for key in plan.keys if not key.merge and key.spec.merged]
        if copied:
            warnings.append(f"{len(copied)} keys of merged components are copied unchanged (from "
                            f"{', '.join(sorted({self._label_of(k.copy_from) for k in copied if k.copy_from}))}): "
                            f"not every input has them, or they are not floating point")
        own = sorted({op.method.name for op in self.ops if op.method is not None and op.method.coefficients is None})
        if own:
            whole = sorted({op.method.name for op in self.ops if op.method is not None and not op.method.elementwise
                            and not op.method.lazy_inputs})
            warnings.append(f"{', '.join(own)}: the memory a method uses inside its call comes on top of the peak "
                            f"memory shown" + (f" ({', '.join(whole)} on whole keys, not chunks)" if whole else ""))
        if plan.encoder is not None:
            warnings.append(f"saving as {plan.options.save_as}: the encoder's own work on each key (a "
                            f"factorisation, say) comes on top of the peak memory shown")
        warnings.append(f"non-finite values ({plan.options.nonfinite}): {NONFINITE_POLICY[plan.options.nonfinite]}")
        return warnings


def _identity(leaf: Leaf) -> tuple[Any, ...]:
    """What makes two leaves one model: the same file (or dict) read as the same type under the same
    names (layers of one file renamed to two places of a stacked model are two inputs)."""
    where = str(leaf.path.resolve()) if leaf.path is not None else id(leaf.node.source)
    return (where, leaf.type.name, leaf.arch_name, leaf.node.rename)


def _post_order(root: Op) -> list[Op]:
    """Every distinct node under `root`, each after its inputs, without recursion."""
    order: list[Op] = []
    placed: set[int] = set()
    stack: list[tuple[Op, bool]] = [(root, False)]
    while stack:
        op, expanded = stack.pop()
        if id(op) in placed:
            continue
        if expanded:
            placed.add(id(op))
            order.append(op)
            continue
        stack.append((op, True))
        stack.extend((i, False) for i in reversed(op.inputs) if id(i) not in placed)
    return order


def _spec(component: str, block: str, class_: str | None) -> KeySpec:
    """A key of one block (and class) of a component, to resolve hyperparameters for."""
    return KeySpec("", (), component=component, blocks=(block,) if block else (), class_=class_)


def _group(names: Sequence[str], values: Mapping[str, Any], order: Sequence[str]) -> list[tuple[Any, list[str]]]:
    """`names` as runs of blocks adjacent in `order` (a class's: the blocks holding it) with equal
    values, as (value, blocks); the keys in no block ("") stay a run of their own."""
    position = {name: index for index, name in enumerate(order)}
    runs: list[tuple[Any, list[str]]] = []
    for name in names:
        last = runs[-1][1][-1] if runs else None
        if (last is not None and name and last and runs[-1][0] == values[name]
                and position[name] == position[last] + 1):
            runs[-1][1].append(name)
        else:
            runs.append((values[name], [name]))
    return runs


def _tidy(value: float) -> float:
    """A coefficient without the float noise of composing them (0.30000000000000004 -> 0.3)."""
    rounded = round(value, 12)
    return 0.0 if rounded == 0 else rounded


def _letters(index: int) -> str:
    """A, B, ..., Z, AA, AB, ...: short model labels."""
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def format_bytes(count: float) -> str:
    """Bytes as people read them (1.97 GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError  # pragma: no cover

