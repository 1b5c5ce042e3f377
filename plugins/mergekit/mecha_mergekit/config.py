"""Reading a mergekit YAML configuration into checked plain data.

mergekit accepts and ignores fields it does not know; a typo there silently changes a merge. Here
every field is checked: an unknown one is refused with the nearest valid name, and a field mergekit
knows but mecha cannot do yet is refused naming it and why.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mecha_core import MechaError

from .names import unknown

TOP_LEVEL = ("models", "slices", "merge_method", "base_model", "dtype", "out_dtype", "tokenizer_source", "parameters")
NOT_YET = {
    "modules": "per-module merges (multimodal models)",
    "tokenizer": "tokenizer surgery (added tokens, padding)",
    "chat_template": "chat templates",
    "residual_weight": "slice residual weights",
}


@dataclasses.dataclass(frozen=True)
class Source:
    """A model of a merge, whole (`layer_range` None) or a range of its layers, with its own parameters."""

    model: str
    parameters: dict[str, Any]
    layer_range: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Slice:
    """Output layers made from the same layer range of each source."""

    sources: tuple[Source, ...]
    parameters: dict[str, Any]
    base_model: str | None = None


@dataclasses.dataclass(frozen=True)
class MergekitConfig:
    path: Path
    merge_method: str
    slices: tuple[Slice, ...]  # a `models:` config is one slice of whole models
    uses_slices: bool
    base_model: str | None
    parameters: dict[str, Any]
    dtype: str | None
    out_dtype: str | None

    def error(self, message: str) -> MechaError:
        return MechaError(f"{self.path}: {message}")


def load_config(path: Path) -> MergekitConfig:
    """Parse and check a mergekit configuration file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise MechaError(f"{path}: cannot read: {error}") from None
    except yaml.YAMLError as error:
        raise MechaError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    where = str(path)
    _fields(data, TOP_LEVEL, where, "the configuration")
    if not isinstance(data.get("merge_method"), str):
        raise MechaError(f"{where}: merge_method is required (a method name such as ties or slerp)")
    if ("models" in data) == ("slices" in data):
        raise MechaError(f"{where}: give exactly one of models and slices")
    tokenizer = data.get("tokenizer_source")
    if tokenizer not in (None, "base"):
        raise MechaError(f"{where}: tokenizer_source {tokenizer!r} is not supported yet (only 'base': the base "
                         f"model's tokenizer, copied with the output); mecha cannot build tokenizer unions")
    base = _model_name(data["base_model"], f"{where}: base_model") if data.get("base_model") is not None else None
    parameters = _parameters(data.get("parameters"), f"{where}: parameters")
    if "models" in data:
        models = _list(data["models"], f"{where}: models")
        sources = tuple(_source(entry, f"{where}: models[{i}]", with_range=False) for i, entry in enumerate(models))
        slices = (Slice(sources, {}),)
    else:
        slices = tuple(_slice(entry, f"{where}: slices[{i}]")
                       for i, entry in enumerate(_list(data["slices"], f"{where}: slices")))
    return MergekitConfig(path, data["merge_method"], slices, "slices" in data, base, parameters,
                          _dtype_name(data.get("dtype"), f"{where}: dtype"),
                          _dtype_name(data.get("out_dtype"), f"{where}: out_dtype"))


def _fields(data: Any, allowed: tuple[str, ...], where: str, what: str) -> None:
    if not isinstance(data, dict):
        raise MechaError(f"{where}: {what} must be a mapping of fields, got {type(data).__name__}")
    for key in data:
        if key in NOT_YET:
            raise MechaError(f"{where}: field {key!r} ({NOT_YET[key]}) is not supported by mecha yet")
        if key not in allowed:
            raise MechaError(f"{where}: {unknown('field', str(key), allowed, f' in {what}')}")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise MechaError(f"{where}: expected a non-empty list")
    return value


def _model_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MechaError(f"{where}: expected a model path, got {value!r}")
    if "+" in value:
        raise MechaError(f"{where}: {value!r}: a model with a LoRA (model+lora) is not supported yet; bake the "
                         f"LoRA first")
    return value


def _source(entry: Any, where: str, *, with_range: bool) -> Source:
    fields = ("model", "parameters", "layer_range") if with_range else ("model", "parameters")
    _fields(entry, fields, where, "a source" if with_range else "a model entry")
    if "model" not in entry:
        raise MechaError(f"{where}: model is required")
    layer_range = None
    if with_range:
        value = entry.get("layer_range")
        if (not isinstance(value, list) or len(value) != 2 or not all(type(v) is int for v in value)
                or not 0 <= value[0] < value[1]):
            raise MechaError(f"{where}: layer_range must be [start, end] with 0 <= start < end, got {value!r}")
        layer_range = (value[0], value[1])
    return Source(_model_name(entry["model"], f"{where}: model"),
                  _parameters(entry.get("parameters"), f"{where}: parameters"), layer_range)


def _slice(entry: Any, where: str) -> Slice:
    _fields(entry, ("sources", "parameters", "base_model"), where, "a slice")
    sources = tuple(_source(s, f"{where}: sources[{i}]", with_range=True)
                    for i, s in enumerate(_list(entry.get("sources"), f"{where}: sources")))
    lengths = {s.layer_range[1] - s.layer_range[0] for s in sources if s.layer_range}
    if len(lengths) > 1:
        raise MechaError(f"{where}: every source of a slice must span the same number of layers, got "
                         f"{sorted(lengths)}")
    base = _model_name(entry["base_model"], f"{where}: base_model") if entry.get("base_model") is not None else None
    return Slice(sources, _parameters(entry.get("parameters"), f"{where}: parameters"), base)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MechaError(f"{where}: expected a mapping of parameter names to values")
    for name, setting in value.items():
        _check_setting(setting, f"{where}: {name}")
    return dict(value)


def _check_setting(setting: Any, where: str) -> None:
    """A value, a gradient (list of values), or filtered values ({filter, value} or a list of them)."""
    if isinstance(setting, (bool, int, float)):
        return
    if isinstance(setting, dict):
        _fields(setting, ("filter", "value"), where, "a filtered value")
        if "value" not in setting:
            raise MechaError(f"{where}: a filtered value needs value")
        if not isinstance(setting.get("filter", ""), str) and setting.get("filter") is not None:
            raise MechaError(f"{where}: filter must be a string (a part of tensor names, e.g. self_attn)")
        _check_setting(setting["value"], where)
        return
    if isinstance(setting, list) and setting:
        if all(isinstance(item, dict) for item in setting):
            for item in setting:
                _check_setting(item, where)
            return
        if all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in setting):
            return
    raise MechaError(f"{where}: expected a number, a gradient (a list of numbers) or filtered values "
                     f"({{filter: ..., value: ...}}), got {setting!r}")


_DTYPES = {"float32": "fp32", "fp32": "fp32", "float": "fp32", "float16": "fp16", "fp16": "fp16", "half": "fp16",
           "bfloat16": "bf16", "bf16": "bf16", "float64": "fp64", "fp64": "fp64"}


def _dtype_name(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in _DTYPES:
        raise MechaError(f"{where}: {unknown('dtype', str(value), sorted(_DTYPES))}")
    return _DTYPES[value.lower()]
