"""Block-wise and class-wise hyperparameters.

A hyperparameter is a number, or a dict that gives values by component, block and class, with the
sd-mecha key names so old recipes keep their meaning:

- ``<arch>_<component>_default``: every key of the component;
- ``<arch>_<component>_block_<block>``: the keys of a block (``sd1_unet_block_in3``);
- ``<arch>_<component>_class_<class>``: the keys of a layer type (``sd1_unet_class_attn2_to_k``);
- ``<arch>_<component>_block_<block>_class_<class>``: the keys of a layer type in one block
  (``llm_layers_block_layer3_class_mlp_up_proj``), for values that vary by block differently for
  each layer type (mergekit's filtered gradients).

For a key, the value is its block-and-class value if given (the mean over its blocks that have
one), else its class value, else the mean of the given values of its blocks, else its component
default, else 0. Dicts combine with ``|``.

An architecture named by a string is looked up in `plugins` (None: the plugin set in use).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .architecture import GENERIC, Architecture, KeySpec
from .errors import MechaError, RecipeError, suggest, unknown
from .plugins import Plugins, get_plugins

Number = int | float


def _registered(arch: str | Architecture, plugins: Plugins | None) -> Architecture | None:
    if isinstance(arch, Architecture):
        return arch
    if arch == GENERIC:
        return None
    return (plugins or get_plugins()).architectures.get(arch)


def _architecture(arch: str | Architecture, plugins: Plugins | None) -> Architecture | None:
    """The architecture whose blocks and classes check the names given, or None where they depend on
    the model (generic, or a family not specialized yet): such names are checked when merging."""
    found = _registered(arch, plugins)
    return None if found is None or found.is_family else found


def _arch_name(arch: str | Architecture) -> str:
    return arch.name if isinstance(arch, Architecture) else arch


def blocks(arch: str | Architecture, component: str, *values: Number, strict: bool = True,
           plugins: Plugins | None = None, **named: Number) -> dict[str, Number]:
    """Values by block: positionally in the architecture's block order, or by block name.

    ``blocks("sd1", "unet", *25 values)`` covers in0..in11, mid, out0..out11; ``strict=False`` allows
    fewer positional values (the first blocks).
    """
    if values and named:
        raise RecipeError("blocks(): give values either positionally or by block name, not both")
    architecture = _architecture(arch, plugins)
    prefix = f"{_arch_name(arch)}_{component}_block_"
    if architecture is None:
        if values:
            raise RecipeError(f"blocks(): the {_arch_name(arch)} architecture has no fixed block order (it depends "
                              f"on the model); name the blocks, or pass the model's architecture")
        return {prefix + name: value for name, value in named.items()}
    order = architecture.component(component).blocks
    if values:
        if len(values) > len(order) or (strict and len(values) != len(order)):
            raise RecipeError(f"blocks(): {architecture.name} {component} has {len(order)} blocks "
                              f"({', '.join(order)}), got {len(values)} values"
                              + ("; pass strict=False to give only the first ones" if len(values) < len(order) else ""))
        return {prefix + name: value for name, value in zip(order, values)}
    for name in named:
        if name not in order:
            raise RecipeError(unknown("block", name, order, f" in {architecture.name} {component}"))
    return {prefix + name: value for name, value in named.items()}


def classes(arch: str | Architecture, component: str, *, plugins: Plugins | None = None,
            **named: Number) -> dict[str, Number]:
    """Values by class (layer type), e.g. ``classes("sd1", "unet", attn2_to_k=0.2)``."""
    architecture = _architecture(arch, plugins)
    if architecture is not None:
        known = architecture.classes.get(architecture.component(component).name, ())
        for name in named:
            if name not in known:
                raise RecipeError(unknown("class", name, known, f" in {architecture.name} {component}"))
    prefix = f"{_arch_name(arch)}_{component}_class_"
    return {prefix + name: value for name, value in named.items()}


def default(arch: str | Architecture, components: str | Iterable[str] | None = None,
            value: Number = 0, *, plugins: Plugins | None = None) -> dict[str, Number]:
    """One value for every key of some components (all components when None)."""
    architecture = _registered(arch, plugins)
    if components is None:
        names = [c.name for c in architecture.components] if architecture else ["model"]
    else:
        names = [components] if isinstance(components, str) else list(components)
        if architecture is not None:
            for name in names:
                architecture.component(name)
    return {f"{_arch_name(arch)}_{name}_default": value for name in names}


def check_dict(values: Mapping[str, Any], architecture: Architecture, where: str) -> None:
    """Refuse dict keys that name no component, block or class of the architecture."""
    valid = set(architecture.hyper_keys)
    for key in values:
        if key not in valid and not _is_block_class_key(key, architecture):
            prefix = key.split("_", 1)[0]
            hint = ""
            if prefix != architecture.name and not key.startswith(architecture.name + "_"):
                hint = f" (this merge is {architecture.name}; the key is for another architecture?)"
            raise MechaError(f"{where}: unknown block/class key {key!r}{hint}; "
                             f"{suggest(key, valid, what='key')}")


def _is_block_class_key(key: str, architecture: Architecture) -> bool:
    """Whether `key` is ``<arch>_<component>_block_<block>_class_<class>`` with all four known."""
    for component in architecture.components:
        prefix = f"{architecture.name}_{component.name}_block_"
        if key.startswith(prefix):
            block, separator, class_ = key[len(prefix):].partition("_class_")
            if separator and block in component.blocks and class_ in architecture.classes[component.name]:
                return True
    return False


def resolve(value: Any, architecture: Architecture, spec: KeySpec) -> Any:
    """The number a hyperparameter takes for one key."""
    if isinstance(value, Mapping):
        prefix = f"{architecture.name}_{spec.component}"
        if spec.class_ is not None:
            by_both = [value[k] for k in (f"{prefix}_block_{b}_class_{spec.class_}" for b in spec.blocks)
                       if k in value]
            if by_both:
                return sum(by_both) / len(by_both)
            by_class = value.get(f"{prefix}_class_{spec.class_}")
            if by_class is not None:
                return by_class
        by_block = [value[k] for k in (f"{prefix}_block_{b}" for b in spec.blocks) if k in value]
        if by_block:
            return sum(by_block) / len(by_block)
        return value.get(f"{prefix}_default", 0)
    if isinstance(value, tuple):
        return tuple(resolve(v, architecture, spec) for v in value)
    return value
