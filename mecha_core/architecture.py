"""Architectures: which keys a model has, how they group into components, blocks and classes.

An architecture plugin returns :class:`Architecture` objects from ``mecha_architectures()``. The core
uses them to detect what a file is, to decide which keys are merged and which pass through, and to
resolve block-wise and class-wise hyperparameters per key. A file no architecture claims gets a
*generic* architecture derived from its own header, so any model (an LLM, say) still merges.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import dtypes
from .errors import MechaError, unknown
from .names import validate_name

GENERIC = "generic"


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """One key of an architecture.

    ``component`` names a merge component (``unet``, ``txt``) for merged keys and what the key belongs
    to (``vae``, ``ema``, ``scheduler``) for keys that pass through unchanged.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    component: str = ""
    blocks: tuple[str, ...] = ()
    class_: str | None = None
    merged: bool = True
    optional: bool = False
    aliases: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Component:
    """A merge component of an architecture with its blocks in their natural order."""

    name: str
    blocks: tuple[str, ...] = ()
    summary: str = ""

    def __post_init__(self) -> None:
        validate_name(self.name, "component")


@dataclasses.dataclass(frozen=True)
class ArchitectureMatch:
    """How well a file's keys fit an architecture."""

    architecture: str
    missing: tuple[str, ...]
    unknown: tuple[str, ...]
    present: int

    @property
    def matches(self) -> bool:
        return not self.missing and self.present > 0


@dataclasses.dataclass(frozen=True, eq=False)
class Architecture:
    """An architecture: a name, its merge components, and a function listing its keys.

    ``keys`` is called once, lazily, and returns every key (merged or not) with its shape. ``generate``,
    when given, builds a random state dict: ``generate(seed=0, dtype=torch.float32, tiny=True)`` where
    ``tiny`` shrinks every dimension for tests and demos. ``detect``, when given, replaces the default
    detection by key names.

    ``specialize``, when given, makes the architecture a *family* whose keys depend on the model (an
    LLM's layer count and widths): the registered object names the family and its components, and
    ``specialize(file)`` returns the architecture of one opened model (same name and components,
    with that model's blocks and keys), or None when the file is not of the family. Detection and
    merges use the specialized architecture (see :meth:`for_file`).

    ``model_spec`` names the architecture for other tools, in Stability AI's model spec (the
    ``modelspec.*`` metadata civitai, A1111 and ComfyUI read), without the ``modelspec.`` prefix:
    ``architecture`` and ``implementation`` (both required for the spec to be written), and any other
    key of the spec that holds for every model of the architecture (``resolution``, ``prediction_type``).
    A merged file's metadata then carries them with the title, date and sources of the merge; a save
    format (a LoRA) derives its own names from them.

    ``optional_components`` names the parts (a merge component such as ``txt``, or what passed-through
    keys belong to, such as ``vae``) that files may leave out as a whole, so one architecture accepts
    every packaging people share (a FLUX.1 transformer alone or with its text encoders and VAE). A
    file holding none of such a part's keys still matches; one holding some but not all does not. A
    merge's output keeps the parts of its first model (see ``merge(..., layout=)``).

    ``keep_spelling`` says the keys' aliases are packagings (a transformer saved without its
    ``model.diffusion_model.`` prefix), not outdated names: a merge's output then spells every key
    as that model does, instead of under the name listed first.

    ``output_config`` holds the settings of the model's Hugging Face ``config.json`` that the
    architecture itself fixes (a family's specialization: an LLM's ``num_hidden_layers``). A merge
    written as a model folder sets them in the config it copies, so the output's config describes
    the output's own keys: a model stacking the layers of shallower ones says its own depth.
    """

    name: str
    components: tuple[Component, ...]
    keys: Callable[[], Iterable[KeySpec]]
    summary: str = ""
    generate: Callable[..., dict[str, Any]] | None = None
    detect: Callable[[Architecture, Mapping[str, Any]], ArchitectureMatch] | None = None
    specialize: Callable[[Any], Architecture | None] | None = None
    model_spec: Mapping[str, str] = dataclasses.field(default_factory=dict)
    optional_components: tuple[str, ...] = ()
    keep_spelling: bool = False
    output_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_name(self.name, "architecture")

    @functools.cached_property
    def key_specs(self) -> dict[str, KeySpec]:
        specs: dict[str, KeySpec] = {}
        components = {c.name: c for c in self.components}
        for spec in self.keys():
            if spec.name in specs:
                raise ValueError(f"architecture {self.name!r}: key {spec.name!r} listed twice")
            if spec.merged:
                component = components.get(spec.component)
                if component is None:
                    raise ValueError(f"architecture {self.name!r}: key {spec.name!r} is merged but its component "
                                     f"{spec.component!r} is not declared")
                stray = set(spec.blocks) - set(component.blocks)
                if stray:
                    raise ValueError(f"architecture {self.name!r}: key {spec.name!r} names undeclared blocks {sorted(stray)}")
            specs[spec.name] = spec
        return specs

    @functools.cached_property
    def aliases(self) -> dict[str, str]:
        """Alternative spelling -> canonical key."""
        return {alias: spec.name for spec in self.key_specs.values() for alias in spec.aliases}

    def canonical(self, name: str) -> str:
        return self.aliases.get(name, name)

    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise MechaError(unknown("component", name, [c.name for c in self.components],
                                 f" of architecture {self.name!r}"))

    @functools.cached_property
    def classes(self) -> dict[str, tuple[str, ...]]:
        """Component -> its classes, sorted."""
        found: dict[str, set[str]] = {c.name: set() for c in self.components}
        for spec in self.key_specs.values():
            if spec.merged and spec.class_:
                found[spec.component].add(spec.class_)
        return {name: tuple(sorted(classes)) for name, classes in found.items()}

    @functools.cached_property
    def hyper_keys(self) -> tuple[str, ...]:
        """Every valid key of a block/class hyperparameter dict for this architecture."""
        names = []
        for component in self.components:
            prefix = f"{self.name}_{component.name}"
            names.append(f"{prefix}_default")
            names.extend(f"{prefix}_block_{b}" for b in component.blocks)
            names.extend(f"{prefix}_class_{c}" for c in self.classes[component.name])
        return tuple(names)

    @property
    def is_family(self) -> bool:
        """Whether the keys depend on the model (``specialize`` is set)."""
        return self.specialize is not None

    def for_file(self, file: Any) -> Architecture | None:
        """The architecture of an opened model (a ``TensorFile``): itself, or for a family its
        specialization to that model (None when the file is not of the family)."""
        if self.specialize is None:
            return self
        return self.specialize(file)

    def for_keys(self, tensors: Mapping[str, Any], label: str = "<keys>",
                 origins: Mapping[str, tuple[Any, str]] | None = None) -> Architecture | None:
        """The architecture of a model holding exactly `tensors` (name -> ``TensorInfo``): for a
        family, its specialization to those keys alone, with no file beside them to read (no
        ``config.json``). This is the architecture of an output made of renamed inputs (layers of
        models stacked into a deeper one), whose keys are known before any model of that depth exists.
        `origins` (key -> the opened file it is read from and its name there) lets a family describe
        the output from its inputs' own settings (the attention type of each stacked layer)."""
        return self.for_file(KeyTable(dict(tensors), label, dict(origins or {})))

    def match(self, tensors: Mapping[str, Any]) -> ArchitectureMatch:
        """How well the keys of a file fit; ``detect`` overrides the default rule."""
        if self.detect is not None:
            return self.detect(self, tensors)
        return match_by_keys(self, tensors)


@dataclasses.dataclass(frozen=True)
class KeyTable:
    """A model known only by its keys: what :meth:`Architecture.for_keys` specializes a family to
    (``tensors`` and ``label`` as a ``TensorFile`` has them; no ``path``, no metadata), with the
    ``origins`` of its keys where known (key -> the opened file it is read from, its name there)."""

    tensors: Mapping[str, Any]
    label: str
    origins: Mapping[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)
    path: None = None
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)


def match_by_keys(architecture: Architecture, tensors: Mapping[str, Any]) -> ArchitectureMatch:
    """The default detection rule: every required key is present (under any alias), except those of
    optional components the file leaves out entirely."""
    specs = architecture.key_specs
    present = {architecture.canonical(name) for name in tensors}
    absent = absent_components(architecture, present)
    missing = tuple(sorted(name for name, spec in specs.items()
                           if not spec.optional and name not in present and spec.component not in absent))
    unknown = tuple(sorted(name for name in present if name not in specs))
    return ArchitectureMatch(architecture.name, missing, unknown, len(present & specs.keys()))


def absent_components(architecture: Architecture, keys: Iterable[str]) -> frozenset[str]:
    """The optional components of which none of `keys` (canonical names) is a key."""
    held = {architecture.key_specs[key].component for key in keys if key in architecture.key_specs}
    return frozenset(architecture.optional_components) - held


def pick_architecture(matches: Sequence[tuple[Architecture, ArchitectureMatch]]) -> tuple[Architecture | None, str]:
    """The architecture a file belongs to, from how well each candidate matched its keys, or None
    with a note of why none fits.

    Detection is a decision among peers: every architecture is asked, the ones that match compete
    on how few unknown keys they leave, and a tie is reported rather than settled by install order.
    """
    fitting = [(arch, m) for arch, m in matches if m.matches]
    if fitting:
        fitting.sort(key=lambda pair: (len(pair[1].unknown), pair[0].name))
        if len(fitting) > 1 and len(fitting[0][1].unknown) == len(fitting[1][1].unknown):
            names = ", ".join(arch.name for arch, _ in fitting)
            return None, f"the keys fit several architectures equally well ({names}); pass arch= explicitly"
        return fitting[0][0], ""
    near = [(arch, m) for arch, m in matches if m.present > 0]
    if not near:
        return None, "no registered architecture shares its keys"
    arch, best = max(near, key=lambda pair: (pair[1].present, -len(pair[1].missing)))
    shown = ", ".join(best.missing[:5]) + (", ..." if len(best.missing) > 5 else "")
    return None, f"looks like {arch.name} but {len(best.missing)} keys are missing: {shown}"


_INDEX = re.compile(r"^\d+$")


def generic_key_spec(name: str, shape: tuple[int, ...], dtype_name: str) -> KeySpec:
    """Blocks and classes for a key of an unknown architecture, derived from its dotted path.

    The block is the path up to the first numeric index (``model.layers.12`` -> ``model_layers_12``),
    the class the rest without indices and ``.weight``/``.bias`` (``self_attn_q_proj``), so an LLM
    still merges layer by layer and layer type by layer type.
    """
    parts = name.split(".")
    if parts[-1] in ("weight", "bias") and len(parts) > 1:
        parts = parts[:-1]
    index = next((i for i, part in enumerate(parts) if _INDEX.match(part)), None)
    if index is None:
        blocks: tuple[str, ...] = ()
        rest = parts
    else:
        blocks = (_identifier("_".join(parts[: index + 1])),)
        rest = [p for p in parts[index + 1:] if not _INDEX.match(p)] or parts[:index]
    class_ = _identifier("_".join(rest)) or None
    merged = dtypes.is_float_name(dtype_name)
    return KeySpec(name, shape, dtype_name, "model", blocks, class_, merged=merged)


def _identifier(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower()).strip("_")


def generic_architecture(tensor_sets: Iterable[Mapping[str, Any]]) -> Architecture:
    """An architecture holding the union of the keys of some files, for files no plugin claims."""
    specs: dict[str, KeySpec] = {}
    for tensors in tensor_sets:
        for name, info in tensors.items():
            if name not in specs:
                specs[name] = generic_key_spec(name, tuple(info.shape), info.torch_dtype_name)
    blocks = sorted({b for s in specs.values() if s.merged for b in s.blocks}, key=_natural)
    return Architecture(name=GENERIC, components=(Component("model", tuple(blocks)),),
                        keys=lambda: specs.values(),
                        summary="any model: keys, blocks and classes derived from the file's own header")


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
