"""What a converted recipe needs to know about a model: its keys, its layers, and how mecha groups them.

mergekit resolves gradients and filters per tensor; a mecha recipe gives values by component, block
and class. To translate one into the other, the converter evaluates mergekit's value for every key
of the output and writes it under the key's group in the output's architecture: the architecture
claiming the models, specialized to the output's keys (``llm``: components ``embed``, ``layers``,
``lm_head``, blocks ``layer0..layerN-1`` for an output of N layers), else the generic
architecture's, whose rule (block: the path to the first index; class: the rest, without indices and
``.weight``/``.bias``) is the core's own.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from mecha_core import KeySpec, MechaError, TensorInfo, generic_key_spec, get_plugins, open_tensor_file

GENERIC = "generic"
_LAYER = re.compile(r"^(.*?\.)(\d+)\.(.+)$")


@dataclasses.dataclass(frozen=True)
class ModelLayout:
    """A model's tensors, its layer prefix (``model.layers.``), layer count and architecture."""

    path: str
    tensors: dict[str, TensorInfo]
    layer_prefix: str
    num_layers: int
    arch: str

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.tensors)

    def dtype(self, key: str) -> str:
        return self.tensors[key].torch_dtype_name

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
        counts = Counter(d for d in map(self.dtype, self.keys) if d in ("float16", "bfloat16", "float32"))
        return counts.most_common(1)[0][0] if counts else None


def read_layout(model: str, where: str) -> ModelLayout:
    """Open a model's header: a safetensors file, a Hugging Face model folder or its shard index."""
    path = Path(model).expanduser()
    if not path.exists():
        raise MechaError(f"{where}: model {model!r} not found (mergekit model names are paths here; the hub is "
                         f"not searched)")
    file = open_tensor_file(path)
    try:
        tensors = dict(file.tensors)
        arch = _architecture(file)
    finally:
        file.close()
    found = Counter(m.group(1) for m in map(_LAYER.match, tensors) if m)
    if not found:
        raise MechaError(f"{where}: model {model!r} has no numbered layers (keys like model.layers.0.*)")
    prefix = found.most_common(1)[0][0]
    layers = {int(m.group(2)) for m in map(_LAYER.match, tensors) if m and m.group(1) == prefix}
    return ModelLayout(str(model), tensors, prefix, max(layers) + 1, arch)


def _architecture(file: Any) -> str:
    """The name of the registered architecture that claims the file (a family specialized to it), else generic."""
    plugins = get_plugins()
    for name in plugins.architectures:
        concrete = plugins.architectures.get(name).for_file(file)
        if concrete is not None and concrete.match(file.tensors).matches:
            return name
    return GENERIC


def output_specs(arch: str, tensors: Mapping[str, TensorInfo], where: str) -> dict[str, KeySpec]:
    """How mecha groups the keys of the output, whose tensors are `tensors` (output key -> the info of
    the key it is read from). A slice configuration's output is none of its models (7 layers stacked
    from models of 4 and 6); the merge specializes the architecture to the keys the renamed inputs
    provide together, and so does this, so the recipe names the output's own blocks."""
    if arch == GENERIC:
        return {key: generic_spec(key) for key in tensors}
    concrete = get_plugins().architectures.get(arch).for_keys(tensors, where)
    missing = concrete.match(tensors).missing if concrete is not None else ()
    if concrete is None or missing:
        detail = f"; it lacks {', '.join(missing[:3])}" if missing else ""
        raise MechaError(f"{where}: the slices do not make a whole model of architecture {arch}{detail}")
    return dict(concrete.key_specs)


def generic_spec(key: str) -> KeySpec:
    """The generic architecture's grouping of a key (the core's documented rule)."""
    return generic_key_spec(key, (), "float32")
