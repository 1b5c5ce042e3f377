"""What a converted recipe needs to know about a model: its keys, its layers, and how mecha groups them.

mergekit resolves gradients and filters per tensor; a mecha recipe gives values by component, block
and class. To translate one into the other, the converter evaluates mergekit's value for every key
and writes it under the key's group: the architecture's when one claims the file (``llm``:
components ``embed``, ``layers``, ``lm_head``, blocks ``layer0..``), else the generic
architecture's, whose rule (block: the path to the first index; class: the rest, without indices and
``.weight``/``.bias``) is the core's own, repeated here for the renamed keys of slices.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import Any

from mecha_core import KeySpec, MechaError, generic_key_spec, get_plugins, open_tensor_file

GENERIC = "generic"
_LAYER = re.compile(r"^(.*?\.)(\d+)\.(.+)$")


@dataclasses.dataclass(frozen=True)
class ModelLayout:
    """A model's keys, its layer prefix (``model.layers.``), layer count and the architecture's key specs."""

    path: str
    keys: tuple[str, ...]
    dtypes: dict[str, str]
    layer_prefix: str
    num_layers: int
    arch: str
    specs: dict[str, KeySpec]

    def layer_of(self, key: str) -> int | None:
        """The layer index of a key, None for keys outside the layers (embeddings, final norm, head)."""
        if not key.startswith(self.layer_prefix):
            return None
        index = key[len(self.layer_prefix):].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    def layer_keys(self, layer: int) -> list[str]:
        prefix = f"{self.layer_prefix}{layer}."
        return [k for k in self.keys if k.startswith(prefix)]

    def outer_keys(self) -> list[str]:
        return [k for k in self.keys if self.layer_of(k) is None]

    def common_float_dtype(self) -> str | None:
        counts = Counter(d for d in self.dtypes.values() if d in ("float16", "bfloat16", "float32"))
        return counts.most_common(1)[0][0] if counts else None

    def spec(self, key: str) -> KeySpec | None:
        """How mecha groups `key` (a key of the output); None when the architecture does not know it."""
        if self.arch == GENERIC:
            return generic_spec(key)
        return self.specs.get(key)

    def hyper_prefix(self, spec: KeySpec) -> str:
        return f"{self.arch}_{spec.component}"


def read_layout(model: str, where: str) -> ModelLayout:
    """Open a model's header: a safetensors file, a Hugging Face model folder or its shard index."""
    path = Path(model).expanduser()
    if not path.exists():
        raise MechaError(f"{where}: model {model!r} not found (mergekit model names are paths here; the hub is "
                         f"not searched)")
    file = open_tensor_file(path)
    try:
        tensors = dict(file.tensors)
        arch, specs = _architecture(file)
    finally:
        file.close()
    found = Counter(m.group(1) for m in map(_LAYER.match, tensors) if m)
    if not found:
        raise MechaError(f"{where}: model {model!r} has no numbered layers (keys like model.layers.0.*)")
    prefix = found.most_common(1)[0][0]
    layers = {int(m.group(2)) for m in map(_LAYER.match, tensors) if m and m.group(1) == prefix}
    return ModelLayout(str(model), tuple(tensors), {k: v.torch_dtype_name for k, v in tensors.items()}, prefix,
                       max(layers) + 1, arch, specs)


def _architecture(file: Any) -> tuple[str, dict[str, KeySpec]]:
    """The registered architecture that claims the file (its keys specialized to it), else generic."""
    plugins = get_plugins()
    for name in plugins.architectures:
        arch = plugins.architectures.get(name)
        concrete = arch.for_file(file)  # a family (the LLMs) specialized to this model
        if concrete is not None and concrete.match(file.tensors).matches:  # type: ignore[attr-defined]
            return name, dict(concrete.key_specs)
    return GENERIC, {}


def generic_spec(key: str) -> KeySpec:
    """The generic architecture's grouping of a key (the core's documented rule)."""
    return generic_key_spec(key, (), "float32")
