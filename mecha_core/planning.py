"""From a recipe to a merge plan, before any tensor is read.

Planning opens every model's header, settles each model's type and architecture, re-checks merge
spaces with what was detected, refuses mixed architectures, checks block/class hyperparameter names,
and decides for every output key whether it is merged, copied or left out, with its shape and dtype.
Only then does the scheduler read tensors.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import dtypes, hyper
from .architecture import (GENERIC, Architecture, ArchitectureMatch, KeySpec, absent_components, generic_architecture,
                           generic_key_spec, pick_architecture)
from .errors import MechaError, MergeError, RecipeError, from_signal, suggest, unknown
from .key_rename import RenamedKeySource, rename_map, renamed_tensors
from .method_spec import MethodSpec
from .model_type import BASE, KeySource, ModelType, OutputEncoder
from .plugins import Plugins
from .recipe import MergeNode, ModelNode, ParameterNode, RecipeNode, infer_space, resolve_model_path, walk
from .spaces import MergeSpace
from .sharded_files import open_tensor_file
from .tensor_files import DictTensors, TensorFile
from .traversal import post_order


@dataclasses.dataclass(eq=False)
class Leaf:
    """A model of the recipe, opened: its file, type, architecture and key source."""

    node: ModelNode
    label: str
    path: Path | None
    file: TensorFile
    type: ModelType
    arch_name: str
    note: str = ""
    source: KeySource | None = None

    @property
    def space(self) -> MergeSpace:
        return self.type.space


@dataclasses.dataclass(eq=False)
class Op:
    """A node of the recipe bound to opened models: what the scheduler evaluates per key."""

    space: MergeSpace
    leaf: Leaf | None = None
    method: MethodSpec | None = None
    inputs: list[Op] = dataclasses.field(default_factory=list)
    hypers: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    provider: str = ""
    node: MergeNode | None = None  # the recipe call it evaluates (names the per-key cache)


@dataclasses.dataclass
class KeyPlan:
    """What happens to one output key."""

    name: str
    spec: KeySpec
    shape: tuple[int, ...]
    merge: bool
    out_dtype: str
    copy_from: Leaf | None = None
    chunkable: bool = False

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclasses.dataclass(frozen=True)
class MergeOptions:
    """Everything about a merge besides the recipe."""

    models_dirs: tuple[str, ...] = ()
    threads: int = 1
    device: str = "cpu"
    work_dtype: str = "float32"
    save_dtype: str = "float16"
    fallback_model: RecipeNode | None = None
    drop: tuple[str, ...] = ()
    nonfinite: str = "warn"
    save_as: str | None = None
    save_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    chunk_bytes: int = 1 << 25
    cache: dict[Any, Any] | None = None
    strict: bool = True  # a model given an architecture (arch=) that its keys do not fit is an error
    layout: str | None = None  # the model (as the recipe names it) whose packaging the output keeps
    save_dtype_all: bool = False  # copied float keys are converted to save_dtype too


@dataclasses.dataclass(eq=False)
class MergePlan:
    """A checked merge, ready to run."""

    root: Op
    architecture: Architecture
    leaves: list[Leaf]
    fallback: Leaf | None
    keys: list[KeyPlan]
    options: MergeOptions
    encoder: OutputEncoder | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    spellings: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> its name in the output, where they differ

    def close(self) -> None:
        for leaf in self.leaves + ([self.fallback] if self.fallback else []):
            (leaf.source or leaf.file).close()

    def check_inputs_unchanged(self) -> None:
        """Refuse a result read from a model that changed during the merge (see SafetensorsFile.check_unchanged)."""
        for leaf in self.leaves + ([self.fallback] if self.fallback else []):
            check = getattr(leaf.file, "check_unchanged", None)
            if check is not None:
                check()

    def input_paths(self) -> list[Path]:
        """Every file and folder the inputs are read from (a sharded model's folder, index and shards)."""
        paths = []
        for leaf in self.leaves + ([self.fallback] if self.fallback else []):
            if leaf.path:
                paths.append(leaf.path)
                paths.extend(getattr(leaf.file, "shard_paths", [getattr(leaf.file, "path", leaf.path)]))
        return paths


def plan_merge(recipe: RecipeNode, options: MergeOptions, plugins: Plugins) -> MergePlan:
    """Check a recipe against its models and decide what happens to every key."""
    holes = recipe.parameters()
    if holes:
        raise RecipeError(f"the recipe still has parameters to fill: {', '.join(sorted(holes))}; fill them with "
                          f"compose() or `mecha compose`")
    check_device(options.device)
    leaves_by_node: dict[int, Leaf] = {}
    opened: list[Leaf] = []
    architectures = working_architectures(plugins)
    try:
        for node in recipe.models():
            leaf = _open_leaf(node, options, plugins, architectures)
            opened.append(leaf)
            leaves_by_node[id(node)] = leaf
        fallback = None
        if options.fallback_model is not None:
            fallback_node = options.fallback_model
            if not isinstance(fallback_node, ModelNode):
                raise RecipeError("the fallback model must be a single model, not a recipe")
            fallback = _open_leaf(fallback_node, options, plugins, architectures)
            opened.append(fallback)
        leaves = [leaves_by_node[id(node)] for node in recipe.models()]
        _check_spaces(recipe, leaves_by_node)
        notes: list[str] = []
        architecture = _settle_architecture(leaves + ([fallback] if fallback else []), plugins, notes)
        for leaf in leaves + ([fallback] if fallback else []):
            leaf.source = leaf.type.open(leaf.file, architecture)
            if leaf.node.rename:
                leaf.source = RenamedKeySource(leaf.source, leaf.node.rename)
        root = _bind(recipe, leaves_by_node, plugins)
        _check_hyper_dicts(recipe, architecture)
        encoder = _encoder(root, architecture, options, plugins)
        layout = _layout_model(leaves, fallback, options.layout)
        keys = _plan_keys(root, architecture, leaves, fallback, options, encoder, notes, layout)
        spellings = _spellings(architecture, layout, keys) if encoder is None else {}
    except BaseException:
        for leaf in opened:
            (leaf.source or leaf.file).close()
        raise
    return MergePlan(root, architecture, leaves, fallback, keys, options, encoder, notes, spellings)


def _layout_model(leaves: list[Leaf], fallback: Leaf | None, name: str | None) -> Leaf:
    """The model whose packaging the output keeps: the first one, or the one the user names."""
    if name is None:
        return leaves[0]
    candidates = leaves + ([fallback] if fallback else [])
    for leaf in candidates:
        if not leaf.node.is_dict and name in (str(leaf.node.source), str(leaf.path), leaf.label):
            return leaf
    named = [str(leaf.node.source) for leaf in candidates if not leaf.node.is_dict]
    raise MechaError(unknown("layout model", name, named, " (layout= names one of the recipe's models)"))


def _spellings(architecture: Architecture, layout: Leaf, keys: list[KeyPlan]) -> dict[str, str]:
    """Output names of the keys the layout model spells another way, for architectures whose aliases
    are packagings (``keep_spelling``) rather than outdated names."""
    if not architecture.keep_spelling or layout.type.name != BASE:
        return {}
    stored = {architecture.canonical(name): name for name in layout.file.tensors}
    return {plan.name: stored[plan.name] for plan in keys if stored.get(plan.name, plan.name) != plan.name}


def _open_leaf(node: ModelNode, options: MergeOptions, plugins: Plugins,
               architectures: Mapping[str, Architecture]) -> Leaf:
    if node.is_dict:
        file: TensorFile = DictTensors(node.source)  # type: ignore[arg-type]
        path = None
    else:
        path = resolve_model_path(str(node.source), options.models_dirs)
        file = open_tensor_file(path)
    try:
        model_type, arch_name, note = detect_model(file, plugins, arch=node.arch, model_type=node.type,
                                                   architectures=architectures)
        if node.arch is not None and options.strict and model_type.name == BASE:
            _check_given_architecture(file, node.arch, architectures, plugins)
    except BaseException:
        file.close()
        raise
    return Leaf(node, file.label, path, file, model_type, arch_name, note)


def working_architectures(plugins: Plugins) -> dict[str, Architecture]:
    """The registered architectures that can list their keys; one whose plugin fails to is reported
    as a plugin problem (naming the plugin) and left out, so it cannot break every merge."""
    usable = {}
    for name in plugins.architectures:
        arch = plugins.architectures.get(name)
        try:
            arch.key_specs
        except Exception as error:
            _report_broken(plugins, name, "could not list its keys", error)
            continue
        usable[name] = arch
    return usable


def _report_broken(plugins: Plugins, name: str, what: str, error: Exception) -> None:
    provider = plugins.provider("architectures", name).label
    plugins.report(f"architecture {name!r} from plugin {provider} {what} ({type(error).__name__}: {error}); "
                   f"it is skipped")


def _matches(architectures: Mapping[str, Architecture], file: TensorFile,
             plugins: Plugins) -> list[tuple[Architecture, ArchitectureMatch]]:
    found = []
    for name, arch in architectures.items():
        try:
            concrete = arch.for_file(file)
            if concrete is not None:
                found.append((concrete, concrete.match(file.tensors)))
        except MechaError:
            raise
        except Exception as error:
            _report_broken(plugins, name, f"failed to inspect {file.label}", error)
    return found


def detect_model(file: TensorFile, plugins: Plugins, *, arch: str | None = None, model_type: str | None = None,
                 architectures: Mapping[str, Architecture] | None = None) -> tuple[ModelType, str, str]:
    """The model type and architecture of an opened file, as given or detected, with a note on why
    no architecture fits when the generic one is used. `architectures` defaults to
    :func:`working_architectures`.

    The type is the one given, else the one type whose ``detect`` claims the file (which also names
    the architecture), else ``base``; the architecture is the one given, else the type's, else the
    best match of the file's keys."""
    if architectures is None:
        architectures = working_architectures(plugins)
    if arch is not None and arch != GENERIC and arch not in architectures:
        plugins.architectures.get(arch)  # an unknown name: the error lists the nearest ones
        raise MechaError(f"{file.label}: architecture {arch!r} is unusable (see the plugin warning above)")
    if model_type is not None:
        found = plugins.model_types.get(model_type)
        if arch is not None:  # both given: taken as they are
            return found, arch, ""
        if found.detect is not None:
            return found, _architecture_for_type(file, found, architectures, plugins), ""
    else:
        claim = _claiming_type(file, plugins, architectures)
        if claim is not None:
            return claim[0], arch or claim[1], ""
        found = plugins.model_types.get(BASE)
    if arch is not None:
        return found, _checked_architecture(file, arch, architectures), ""
    picked, note = pick_architecture(_matches(architectures, file, plugins))
    return found, picked.name if picked else GENERIC, note


def _architecture_for_type(file: TensorFile, model_type: ModelType, architectures: Mapping[str, Architecture],
                           plugins: Plugins) -> str:
    """The architecture a file of a given type targets, as the type detects it."""
    try:
        arch_name = _detect(model_type, file, architectures, plugins)
    except PluginFailure as failure:
        raise MechaError(str(failure)) from failure.__cause__
    if arch_name is None:
        raise MechaError(f"{file.label}: does not look like a {model_type.name} model; check type={model_type.name!r}")
    return arch_name


def _claiming_type(file: TensorFile, plugins: Plugins,
                   architectures: Mapping[str, Architecture]) -> tuple[ModelType, str] | None:
    """The one model type whose ``detect`` claims the file, with the architecture it names; None when
    none does. Two claims are an error: the user says which with ``type=``. A type whose ``detect``
    fails is reported and skipped, like a broken architecture."""
    claims = []
    for name in plugins.model_types:
        candidate = plugins.model_types.get(name)
        if candidate.detect is None:
            continue
        try:
            arch_name = _detect(candidate, file, architectures, plugins)
        except PluginFailure as failure:
            plugins.report(f"{failure}; it is skipped")
            continue
        if arch_name is not None:
            claims.append((candidate, arch_name))
    if len(claims) > 1:
        names = ", ".join(c.name for c, _ in claims)
        raise MechaError(f"{file.label}: several model types claim this file ({names}); pass type= explicitly")
    return claims[0] if claims else None


def _checked_architecture(file: TensorFile, arch: str, architectures: Mapping[str, Architecture]) -> str:
    """An architecture given for a file, refused when none of the file's keys belong to it."""
    concrete = architectures[arch].for_file(file) if arch != GENERIC else None
    if arch != GENERIC and file.tensors and (concrete is None or concrete.match(file.tensors).present == 0):
        raise MechaError(f"{file.label}: none of its keys belong to architecture {arch!r}; check arch={arch!r}")
    return arch


def _check_given_architecture(file: TensorFile, arch: str, architectures: Mapping[str, Architecture],
                              plugins: Plugins) -> None:
    """Refuse an architecture given for a model (``arch=``) that its keys do not fit: its keys are those of
    another architecture, or most of them are unknown to the one given. Merged as given, such a file would
    contribute only the keys the two layouts share and pass the rest through unmerged."""
    concrete = architectures[arch].for_file(file) if arch != GENERIC else None
    if concrete is None or not file.tensors:
        return
    match = concrete.match(file.tensors)
    detected, _ = pick_architecture(_matches(architectures, file, plugins))
    if detected is not None and detected.name != arch:
        why = f"its keys are those of {detected.name}"
    elif len(match.unknown) > match.present:
        why = f"{len(match.unknown)} of its {len(match.unknown) + match.present} keys are not keys of {arch}"
    else:
        return
    raise MechaError(f"{file.label}: arch={arch!r} was given, but {why}; correct arch=, or merge only the keys "
                     f"that fit with strict=False (mecha merge --no-strict)")


class PluginFailure(Exception):
    """A plugin's model type that failed (raised, or answered nonsense) while inspecting a file."""


def _detect(model_type: ModelType, file: TensorFile, architectures: Mapping[str, Architecture],
            plugins: Plugins) -> str | None:
    """``model_type.detect``, held to its contract: None, or the name of a usable architecture."""
    assert model_type.detect is not None

    def failure(what: str) -> PluginFailure:
        provider = plugins.provider("model_types", model_type.name).label
        return PluginFailure(f"model type {model_type.name!r} from plugin {provider} {what} on {file.label}")

    try:
        arch_name = model_type.detect(file, architectures)
    except MechaError:
        raise
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt) and from_signal(error):
            raise
        raise failure(f"failed ({type(error).__name__}: {error})") from error
    if arch_name is not None and (not isinstance(arch_name, str) or (arch_name != GENERIC and arch_name not in architectures)):
        raise failure(f"answered {arch_name!r}, not None or the name of an architecture")
    return arch_name


def check_device(name: str, where: str = "") -> str:
    """`name` when torch can compute on that device here; else an error (prefixed by `where`, e.g.
    ``"config PATH: "``) listing the devices there are."""
    import torch
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is not None and _available(torch, device):
        return name
    raise MechaError(f"{where}device {name!r} is not available here; available devices: {', '.join(devices(torch))}")


def _available(torch: Any, device: Any) -> bool:
    if device.type == "cpu":
        return True
    backend = getattr(torch, device.type, None) if device.type in ("cuda", "xpu", "mps") else None
    try:
        if backend is None or not backend.is_available():
            return False
        count = backend.device_count() if hasattr(backend, "device_count") else 1
    except Exception:  # a backend that cannot even count its devices has none to offer
        return False
    return (device.index or 0) < count


def devices(torch: Any) -> list[str]:
    """The devices a merge can run on here: cpu, then each accelerator (``cuda:0``, ...)."""
    found = ["cpu"]
    for kind in ("cuda", "xpu", "mps"):
        probe = torch.device(kind)
        if _available(torch, probe):
            backend = getattr(torch, kind)
            count = backend.device_count() if hasattr(backend, "device_count") else 1
            found += [kind] + [f"{kind}:{i}" for i in range(count)]
    return found


def _check_spaces(recipe: RecipeNode, leaves: Mapping[int, Leaf]) -> None:
    spaces: dict[int, MergeSpace | None] = {}
    for node in walk(recipe):
        if isinstance(node, ModelNode):
            spaces[id(node)] = leaves[id(node)].space
        elif isinstance(node, MergeNode):
            try:
                spaces[id(node)] = infer_space(node.method, node.inputs, [spaces[id(i)] for i in node.inputs])
            except RecipeError as error:
                raise node.origin.error(error) if node.origin else error from None


def _settle_architecture(leaves: Sequence[Leaf], plugins: Plugins, notes: list[str]) -> Architecture:
    """The one architecture of the merge; a partial file joins the architecture of the others.

    A file missing some keys of an architecture is not detected as it on its own, but when the
    other models are of that architecture and most of the file's keys belong to it, it is merged as
    one (its missing keys come from the other models, by the usual missing-key rule).
    """
    specific = {leaf.arch_name for leaf in leaves if leaf.arch_name != GENERIC}
    if len(specific) == 1:
        arch = _specialized(plugins.architectures.get(next(iter(specific))), leaves)
        for leaf in leaves:
            if leaf.arch_name == GENERIC and leaf.node.arch is None and leaf.type.name == BASE:
                match = arch.match(leaf.file.tensors)
                if match.present and match.present >= len(match.unknown):
                    leaf.arch_name = arch.name
                    notes.append(f"{leaf.label} lacks {len(match.missing)} keys of {arch.name}; merged as "
                                 f"{arch.name}, the other models provide them")
    names = {leaf.arch_name for leaf in leaves}
    if len(names) > 1:
        described = []
        for name in sorted(names):
            leaf = next(leaf for leaf in leaves if leaf.arch_name == name)
            kind = f"a {leaf.type.name} for " if leaf.type.name != BASE else ""
            what = f"is {kind}{name}" if name != GENERIC else f"is not a known architecture ({leaf.note})"
            described.append(f"{leaf.label} {what}")
        raise MergeError("cannot merge models of different architectures: " + "; ".join(described))
    name = names.pop()
    if name == GENERIC:
        return generic_architecture(renamed_tensors(leaf.file.tensors, leaf.node.rename, leaf.label)
                                    if leaf.node.rename else leaf.file.tensors for leaf in leaves)
    return _specialized(plugins.architectures.get(name), leaves)


def _specialized(arch: Architecture, leaves: Sequence[Leaf]) -> Architecture:
    """A family's architecture for this merge: its specialization to the first model of it; the
    others must have the same blocks (the same layer count, say). When models are renamed, the
    specialization to the keys they provide together (see :func:`_specialized_to_output`)."""
    if not arch.is_family:
        return arch
    mine = [leaf for leaf in leaves if leaf.arch_name == arch.name]
    if any(leaf.node.rename for leaf in mine):
        return _specialized_to_output(arch, mine)
    concrete = [(leaf, arch.for_file(leaf.file)) for leaf in mine]
    first_leaf, first = concrete[0]
    for leaf, other in concrete:
        if other is None:
            raise MergeError(f"{leaf.label} is not a model of the {arch.name} family")
        if first is None:
            raise MergeError(f"{first_leaf.label} is not a model of the {arch.name} family")
        for component in first.components:
            if other.component(component.name).blocks != component.blocks:
                raise MergeError(f"cannot merge {arch.name} models of different sizes: {first_leaf.label} has "
                                 f"{len(component.blocks)} {component.name} blocks, {leaf.label} has "
                                 f"{len(other.component(component.name).blocks)}")
    assert first is not None
    return first


def _specialized_to_output(arch: Architecture, leaves: Sequence[Leaf]) -> Architecture:
    """A family for a merge of renamed models (layer ranges of models stacked into another model):
    specialized to the keys the models provide together, under their new names, since the output is
    none of the models (7 layers made of models of 4 and 6). The output must then be a whole model of
    the family: a layer no rename provides is refused, naming its keys."""
    tensors: dict[str, Any] = {}
    origins: dict[str, tuple[TensorFile, str]] = {}
    for leaf in leaves:
        if leaf.type.name != BASE:  # a LoRA's keys are not the output's
            continue
        names = rename_map(leaf.file.tensors, leaf.node.rename, leaf.label) if leaf.node.rename \
            else {name: name for name in leaf.file.tensors}
        for name, stored in names.items():
            if name not in tensors:
                tensors[name] = leaf.file.tensors[stored]
                origins[name] = (leaf.file, stored)
    label = "the renamed models (" + ", ".join(dict.fromkeys(leaf.label for leaf in leaves)) + ")"
    concrete = arch.for_keys(tensors, label, origins)
    if concrete is None:
        raise MergeError(f"{label}: the keys they provide together are not a model of the {arch.name} family")
    missing = concrete.match(tensors).missing
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise MergeError(f"{label}: together they provide no value for {len(missing)} keys of the {arch.name} "
                         f"model they make: {shown}; rename= must cover every layer of the output")
    return concrete


def _bind(recipe: RecipeNode, leaves: Mapping[int, Leaf], plugins: Plugins) -> Op:
    ops: dict[int, Op] = {}
    for node in walk(recipe):
        if isinstance(node, ModelNode):
            leaf = leaves[id(node)]
            ops[id(node)] = Op(space=leaf.space, leaf=leaf)
        elif isinstance(node, MergeNode):
            inputs = [ops[id(i)] for i in node.inputs]
            if node.device is not None:
                try:
                    check_device(node.device, f"merge method {node.method.name!r}: ")
                except MechaError as error:
                    raise node.origin.error(error) if node.origin else error from None
            space = infer_space(node.method, node.inputs, [i.space for i in inputs])
            assert space is not None
            provider = ""
            if node.method.name in plugins.merge_methods and plugins.merge_methods.get(node.method.name) is node.method:
                provider = plugins.provider("merge_methods", node.method.name).label
            ops[id(node)] = Op(space=space, method=node.method, inputs=inputs, hypers=dict(node.hypers),
                               device=node.device, dtype=node.dtype, provider=provider, node=node)
        elif isinstance(node, ParameterNode):  # pragma: no cover - refused earlier
            raise RecipeError(f"unfilled parameter {node.name!r}")
    return ops[id(recipe)]


def _check_hyper_dicts(recipe: RecipeNode, architecture: Architecture) -> None:
    for node in walk(recipe):
        if not isinstance(node, MergeNode):
            continue
        for name, value in node.hypers.items():
            values = value if isinstance(value, tuple) else (value,)
            for item in values:
                if isinstance(item, Mapping):
                    hyper.check_dict(item, architecture, f"merge method {node.method.name!r}, hyperparameter {name!r}")


def _encoder(root: Op, architecture: Architecture, options: MergeOptions, plugins: Plugins) -> OutputEncoder | None:
    if options.save_as is None or options.save_as == BASE:
        return None
    model_type = plugins.model_types.get(options.save_as)
    if model_type.encoder is None:
        raise MechaError(f"model type {model_type.name!r} cannot be saved to (it has no encoder)")
    if root.space != model_type.space:
        hint = " (subtract(finetune, base) gives one)" if model_type.space == MergeSpace.DELTA else ""
        raise MechaError(f"saving as {model_type.name} needs a recipe in {model_type.space.value} space{hint}; "
                         f"this recipe is in {root.space.value} space")
    return model_type.encoder(architecture, {"save_dtype": options.save_dtype, **options.save_options})


def provides(op: Op, key: str, memo: dict[int, bool]) -> bool:
    """Whether `op` yields a value for `key`: its method can run (see :func:`usable_inputs`), or an
    input in its own space has the key and stands in for it.

    Computed bottom-up without recursion, so a recipe hundreds of merges deep is fine; `memo` keeps
    the answer of every node visited (and may be pre-filled, e.g. with inputs treated as missing)."""
    for node in post_order(op, op_inputs, lambda node: id(node) in memo):
        if node.leaf is not None:
            assert node.leaf.source is not None
            result = key in node.leaf.source.keys()
        else:
            have = [memo[id(i)] for i in node.inputs]
            result = _usable(node, have) is not None or any(
                i.space == node.space and h for i, h in zip(node.inputs, have))
        memo[id(node)] = result
    return memo[id(op)]


def usable_inputs(op: Op, key: str, memo: dict[int, bool]) -> list[int] | None:
    """The positions of the inputs a method is called with for `key`, or None when it cannot run.

    Every input must have the key, except the ``*models`` of a variadic method: those lacking it are
    left out (a mean of the models that have the key), as long as one of them remains.
    """
    return _usable(op, [provides(i, key, memo) for i in op.inputs])


def _usable(op: Op, have: list[bool]) -> list[int] | None:
    if all(have):
        return list(range(len(have)))
    assert op.method is not None
    if op.method.variadic is None:
        return None
    fixed = len(op.method.inputs) - 1
    kept = [i for i, h in enumerate(have) if h]
    if not all(have[:fixed]) or len(kept) == fixed:
        return None
    return kept


def op_inputs(op: Op) -> list[Op]:
    """The inputs of a plan node, for :func:`mecha_core.traversal.post_order`."""
    return op.inputs


def _tree_chunkable(root: Op) -> bool:
    return all(_chunkable(op) for op in post_order(root, op_inputs))


def _chunkable(op: Op) -> bool:
    """Whether a node can be evaluated on a flat range of a key: a model whose source reads ranges,
    or an elementwise method needing neither a generator nor a cache."""
    if op.leaf is not None:
        return bool(getattr(op.leaf.source, "supports_ranges", False))
    assert op.method is not None
    return op.method.elementwise and not op.method.wants_generator and "cache" not in op.method.context


def _plan_keys(root: Op, architecture: Architecture, leaves: list[Leaf], fallback: Leaf | None,
               options: MergeOptions, encoder: OutputEncoder | None, notes: list[str], layout: Leaf) -> list[KeyPlan]:
    order: dict[str, None] = {}
    sources = ([fallback] if fallback else []) + leaves
    for leaf in leaves + ([fallback] if fallback else []):
        assert leaf.source is not None
        order.update(dict.fromkeys(leaf.source.keys()))
    chunkable = encoder is None and _tree_chunkable(root)
    plans: list[KeyPlan] = []
    dropped = unknown_keys = orphaned = 0
    # optional parts the layout model (and the fallback, which the user gave to provide keys) leaves out
    held = set(layout.source.keys()) | (set(fallback.source.keys()) if fallback else set())  # type: ignore[union-attr]
    absent = absent_components(architecture, held)
    outside: dict[str, int] = {}
    for key in order:
        spec = architecture.key_specs.get(key)
        if spec is not None and spec.component in absent:
            outside[spec.component] = outside.get(spec.component, 0) + 1
            continue
        holders = [leaf for leaf in sources if key in leaf.source.keys()]  # type: ignore[union-attr]
        infos = [(leaf, leaf.source.info(key)) for leaf in holders]  # type: ignore[union-attr]
        first = infos[0][1]
        if spec is None:
            unknown_keys += 1
            spec = dataclasses.replace(generic_key_spec(key, first.shape, first.torch_dtype_name), merged=False)
        if _dropped(key, spec, options.drop):
            dropped += 1
            continue
        shapes = {info.shape for _, info in infos}
        if len(shapes) > 1:
            listed = ", ".join(f"{leaf.label} {list(info.shape)}" for leaf, info in infos)
            raise MergeError(f"key {key!r} has different shapes in the inputs: {listed}")
        kinds = {dtypes.is_float_name(info.torch_dtype_name) for _, info in infos}
        if len(kinds) > 1:  # a float in one input, an integer or bool in another: blending or copying would be a guess
            listed = ", ".join(f"{leaf.label} {info.torch_dtype_name}" for leaf, info in infos)
            raise MergeError(f"key {key!r} is a float tensor in some inputs and an integer or bool tensor in "
                             f"others: {listed}; the inputs do not hold the same kind of value there")
        mergeable = spec.merged and dtypes.is_float_name(first.torch_dtype_name)
        if mergeable and provides(root, key, {}):
            plans.append(KeyPlan(key, spec, first.shape, True, options.save_dtype, chunkable=chunkable))
            continue
        if encoder is not None or root.space != MergeSpace.WEIGHT:
            orphaned += 1
            continue
        donor = next((leaf for leaf in holders if leaf.space == MergeSpace.WEIGHT), None)
        if donor is None:
            orphaned += 1
            continue
        stored = donor.source.info(key)  # type: ignore[union-attr]
        out_dtype = options.save_dtype if options.save_dtype_all and dtypes.is_float_name(stored.torch_dtype_name) \
            else stored.torch_dtype_name
        plans.append(KeyPlan(key, spec, stored.shape, False, out_dtype, copy_from=donor))
    _check_drop_patterns(options.drop, order, architecture)
    if outside:
        parts = ", ".join(f"{name} ({count} keys)" for name, count in sorted(outside.items()))
        notes.append(f"left out {parts}: the output keeps the packaging of {layout.label}, which lacks them "
                     f"(layout= names another model)")
    if unknown_keys:
        notes.append(f"{unknown_keys} keys unknown to {architecture.name} were copied unchanged")
    if dropped:
        notes.append(f"{dropped} keys dropped by --drop")
    if orphaned:
        notes.append(f"{orphaned} keys left out: no input could provide them in the output's space")
    if not plans:
        raise MergeError("the merge would produce no keys: the inputs share none that the recipe can compute")
    return plans


def _check_drop_patterns(patterns: Sequence[str], keys: Mapping[str, None], architecture: Architecture) -> None:
    """A ``--drop`` that leaves out nothing is a typo: an error with the nearest components and keys."""
    for pattern in patterns:
        specs = (architecture.key_specs.get(key) for key in keys)
        components = {spec.component for spec in specs if spec is not None and spec.component}
        if pattern in components or any(fnmatch.fnmatchcase(key, pattern) for key in keys):
            continue
        raise MergeError(f"--drop {pattern!r} matches no component and no key of the inputs; "
                         f"{suggest(pattern, sorted(components) + list(keys), what='component or key name')}")


def _dropped(key: str, spec: KeySpec, patterns: Sequence[str]) -> bool:
    return any(spec.component == p or fnmatch.fnmatchcase(key, p) for p in patterns)
