"""The ``llm`` family: decoder-only transformers in the Hugging Face ``*ForCausalLM`` layout.

Every family member stores the same three parts under the same names, whatever its size:

- ``model.embed_tokens.weight``: component ``embed`` (class ``embed_tokens``);
- ``model.layers.<i>.<module path>``: component ``layers``, block ``layer<i>``, class the module path
  below the layer index with dots as underscores (``self_attn_q_proj``, ``mlp_gate_up_proj``,
  ``pre_feedforward_layernorm``); a module's weight and bias share its class;
- ``model.norm.weight`` and ``lm_head.weight``: component ``lm_head`` (classes ``norm`` and
  ``lm_head``). The final norm goes with the output head, as mergekit groups them: a value
  interpolated across the layers gives the embedding its first value and both of these its last.
  Tied embeddings (Gemma, small Qwen) store no ``lm_head.weight``; the component then holds the norm.

Only the layer count varies, and it is read from ``num_hidden_layers`` in the ``config.json`` beside
the weights (from the key names when there is no such file): a model missing a layer or a module of
one is then reported with its missing keys instead of merged short. Shapes are the weights' own, read
from their header; no table of model sizes exists anywhere.

The count is also what the specialization fixes in an output folder's ``config.json``
(``output_config``): a merge stacking layer ranges (renamed inputs, mergekit's passthrough slices)
is specialized to the keys its inputs provide together, from the key names, so its folder says
its own depth, and each layer's ``layer_types`` entry (sliding or full attention) is the one of the
layer it comes from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mecha_core import Architecture, Component, KeySpec, ModelFileError, TensorInfo

NAME = "llm"
EMBED = "model.embed_tokens.weight"
NORM = "model.norm.weight"
HEAD = "lm_head.weight"
LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
FLOAT_CODES = ("F64", "F32", "F16", "BF16")
CONFIG_FILE = "config.json"

COMPONENTS = (
    Component("embed", (), "token embedding (model.embed_tokens)"),
    Component("layers", (), "decoder layers; blocks layer0..layerN-1, N from the model's config.json"),
    Component("lm_head", (), "final norm (model.norm) and output head (lm_head, absent with tied embeddings)"),
)


def module_class(path: str) -> str:
    """The class of a key from its module path below the layer index, without ``.weight``/``.bias``
    and container indices: ``self_attn.q_proj.weight`` -> ``self_attn_q_proj``, a mixture of
    experts' ``block_sparse_moe.experts.3.w1.weight`` -> ``block_sparse_moe_experts_w1``."""
    parts = path.split(".")
    if len(parts) > 1 and parts[-1] in ("weight", "bias"):
        parts = parts[:-1]
    parts = [part for part in parts if not part.isdigit()] or parts
    return re.sub(r"[^a-z0-9_]", "_", "_".join(parts).lower())


def read_config(file: Any) -> dict[str, Any] | None:
    """The ``config.json`` beside a model's weights (or its shard index), None when there is none.

    ``file.path`` is the weights file or the index of a sharded model; in-memory models have none.
    """
    path = getattr(file, "path", None)
    if path is None:
        return None
    config_path = Path(path).parent / CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelFileError(f"{config_path}: cannot read the model's config: {error}") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{config_path}: expected a JSON object")
    return config


def layer_count(config: Mapping[str, Any] | None, layer_paths: Mapping[int, set[str]], where: str) -> int:
    """``num_hidden_layers`` from the config, else one past the highest layer index in the key names."""
    if config is not None and "num_hidden_layers" in config:
        count = config["num_hidden_layers"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ModelFileError(f"{where}: num_hidden_layers must be a whole number >= 1, got {count!r}")
        return count
    return max(layer_paths) + 1


def specialize(file: Any) -> Architecture | None:
    """The ``llm`` architecture of one model, or None when its keys are not a decoder-only LLM's."""
    tensors: Mapping[str, TensorInfo] = file.tensors
    if EMBED not in tensors:
        return None
    layer_paths: dict[int, set[str]] = {}
    modules: dict[str, TensorInfo] = {}  # module path -> its tensor in the first layer holding it
    for name in sorted(tensors):
        found = LAYER.match(name)
        if found:
            layer_paths.setdefault(int(found.group(1)), set()).add(found.group(2))
            modules.setdefault(found.group(2), tensors[name])
    if not layer_paths:
        return None
    config = read_config(file)
    count = layer_count(config, layer_paths, str(Path(getattr(file, "path", None) or "").parent / CONFIG_FILE))
    tied = HEAD not in tensors and (config is None or config.get("tie_word_embeddings", True) is not False)
    specs = list(_keys(tensors, count, dict(sorted(modules.items())), tied))
    model_type = config.get("model_type") if config else None
    kind = f"{model_type}, " if isinstance(model_type, str) else ""
    return Architecture(
        name=NAME,
        components=(COMPONENTS[0], Component("layers", tuple(f"layer{i}" for i in range(count)), COMPONENTS[1].summary),
                    COMPONENTS[2]),
        keys=lambda: specs,
        summary=f"decoder-only transformer LLM ({kind}{count} layers{', tied embeddings' if tied else ''})",
        output_config=_output_config(file, count),
    )


def _output_config(file: Any, count: int) -> dict[str, Any]:
    """What an output folder's ``config.json`` must say of this model: its layer count and, for a
    model stacked from layers of others, each layer's attention type (``layer_types``, which recent
    ``transformers`` requires to list every layer) as the model it comes from had it."""
    config: dict[str, Any] = {"num_hidden_layers": count}
    types = _stacked_layer_types(getattr(file, "origins", None) or {}, count)
    if types is not None:
        config["layer_types"] = types
    return config


def _stacked_layer_types(origins: Mapping[str, tuple[Any, str]], count: int) -> list[Any] | None:
    """Each layer's entry of ``layer_types`` in the config of the model it is read from (`origins`:
    key -> the opened file and the key's name there); None unless every layer's model lists it."""
    first: dict[int, tuple[Any, str]] = {}
    for name, origin in origins.items():
        found = LAYER.match(name)
        if found:
            first.setdefault(int(found.group(1)), origin)
    configs: dict[int, dict[str, Any] | None] = {}
    types = []
    for index in range(count):
        if index not in first:
            return None
        source, stored = first[index]
        if id(source) not in configs:
            configs[id(source)] = read_config(source)
        listed = (configs[id(source)] or {}).get("layer_types")
        found = LAYER.match(stored)
        if not isinstance(listed, list) or found is None or int(found.group(1)) >= len(listed):
            return None
        types.append(listed[int(found.group(1))])
    return types


def _keys(tensors: Mapping[str, TensorInfo], count: int, modules: Mapping[str, TensorInfo],
          tied: bool) -> Iterable[KeySpec]:
    """Every key of the model. Each module path the file holds in some layer is expected in every
    layer (a layer lacking one shows as missing keys), with the layer's own shape where it has it."""
    yield _spec(EMBED, tensors[EMBED], "embed", (), "embed_tokens")
    for index in range(count):
        for path, first in modules.items():
            name = f"model.layers.{index}.{path}"
            yield _spec(name, tensors.get(name, first), "layers", (f"layer{index}",), module_class(path))
    yield _spec(NORM, tensors.get(NORM, modules.get("input_layernorm.weight")), "lm_head", (), "norm")
    if not tied:
        yield _spec(HEAD, tensors.get(HEAD, tensors[EMBED]), "lm_head", (), "lm_head")


def _spec(name: str, info: TensorInfo | None, component: str, blocks: tuple[str, ...], class_: str) -> KeySpec:
    if info is None:  # a key the model should hold but does not: listed so detection reports it missing
        return KeySpec(name, (), component=component, blocks=blocks, class_=class_)
    return KeySpec(name, info.shape, info.torch_dtype_name, component, blocks, class_,
                   merged=info.dtype in FLOAT_CODES)


LLM = Architecture(
    name=NAME,
    components=COMPONENTS,
    keys=lambda: (),
    summary="decoder-only transformer LLMs saved by Hugging Face transformers (Llama, Mistral, Qwen2/3, "
            "Gemma 2/3, Phi-3, ...); layers and shapes from each model's config.json and header",
    specialize=specialize,
)
