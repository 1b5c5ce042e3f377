"""Reading sd-mecha 1.x recipes (``version 0.1.0``), as stored in the metadata of the files it wrote.

1.x spells models as ``model "path" model_config="sd1-ldm" merge_space="weight"``, passes
hyperparameters by position or by name (``merge "weighted_sum" &0 &1 0.3``), writes ``null`` for
None and inserts conversion calls (``merge "convert_'sd1-kohya'_to_'sd1-ldm'" &0``) for LoRAs. The
methods below have a mecha method of the same meaning; their hyperparameters are renamed where mecha
spells them differently, and a 1.x hyperparameter mecha has no counterpart for is accepted only at the
value that gives mecha's behaviour (its 1.x default). Anything else (another method, another model
config, a block-wise ``literal``) is refused by name, on its line.

The translation keeps 1.x's defaults: a value the recipe leaves out gets 1.x's default, not mecha's
(``ties_sum``'s ``k`` is 1.0 in 1.x, 0.2 in mecha), so the merge means what it meant.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from . import recipe_syntax
from .recipe import MergeNode, ModelNode, RecipeNode

VERSION = "0.1.0"
_FIRST_LINE = re.compile(r"^\s*version\s+0\.1\.0\s*$")


@dataclasses.dataclass(frozen=True)
class _Method:
    """How a 1.x method maps: mecha's name, 1.x's hyperparameters in positional order with their 1.x
    defaults, and the mecha name of each (None: no counterpart, allowed only at its 1.x default)."""

    mecha: str
    inputs: int | None  # None: variadic
    hypers: tuple[tuple[str, Any, str | None], ...] = ()
    bool_to_float: frozenset[str] = frozenset()


def _same(*hypers: tuple[str, Any]) -> tuple[tuple[str, Any, str | None], ...]:
    return tuple((name, default, name) for name, default in hypers)


METHODS: dict[str, _Method] = {
    "weighted_sum": _Method("weighted_sum", 2, _same(("alpha", 0.5))),
    "n_average": _Method("n_average", None),
    "slerp": _Method("slerp", 2, _same(("alpha", 0.5))),
    "add_difference": _Method("add_difference", 2, _same(("alpha", 1.0))),
    "subtract": _Method("subtract", 2),
    "perpendicular_component": _Method("perpendicular_component", 2),
    "geometric_sum": _Method("geometric_sum", 2, _same(("alpha", 0.5))),
    "multiply_quotient": _Method("multiply_quotient", 3, _same(("alpha", 1.0))),
    "add_cosine_a": _Method("add_cosine_a", 2, _same(("alpha", 1.0))),
    "add_cosine_b": _Method("add_cosine_b", 2, _same(("alpha", 1.0))),
    "crossover": _Method("crossover", 2, _same(("alpha", 0.5), ("tilt", 0.0))),
    "clamp": _Method("clamp", None, _same(("stiffness", 0.0))),
    "tensor_sum": _Method("tensor_sum", 2, _same(("width", 0.5), ("offset", 0.0))),
    "top_k_tensor_sum": _Method("top_k_tensor_sum", 2, _same(("width", 1.0), ("offset", 0.0))),
    "rotate": _Method("rotate", 2, _same(("alignment", 1.0), ("alpha", 0.0)) + (
        ("centralization", 1.0, None), ("stiefel_eps", 1e-8, None), ("stiefel_max_iters", 100, None))),
    "ties_sum": _Method("ties_sum", None, _same(("k", 1.0), ("vote_sgn", False)), frozenset({"vote_sgn"})),
    "geometric_median": _Method("geometric_median", None, _same(("eps", 1e-6), ("maxiter", 100), ("ftol", 1e-20))),
    "model_stock": _Method("model_stock_for_tensor", None, _same(("cos_eps", 1e-6))),
}

# 1.x model configs: the mecha architecture, and whether a file of that config is a LoRA
CONFIGS: dict[str, tuple[str, str | None]] = {
    "sd1-ldm": ("sd1", None),
    "sdxl-sgm": ("sdxl", None),
    "sd3-comfyui": ("sd3", None),
    "sd1-kohya": ("sd1", "lora"),
    "sdxl-kohya": ("sdxl", "lora"),
}
_CONVERSION = re.compile(r"^convert_'(?P<source>[\w.\-]+)'_to_'(?P<target>[\w.\-]+)'$")


def is_sd_mecha1(text: str) -> bool:
    """Whether `text` is an sd-mecha 1.x recipe: its first line is ``version 0.1.0``."""
    return bool(_FIRST_LINE.match(text.split("\n", 1)[0].removesuffix("\r")))


def parse_sd_mecha1(text: str, source: str) -> RecipeNode:
    """The mecha recipe of an sd-mecha 1.x recipe, or a RecipeSyntaxError naming what does not map."""
    return _Parser(source).parse(text)


class _Parser(recipe_syntax._Parser):
    """The ``.mecha`` tokenizer and line handling, with 1.x's instructions and ``null``."""

    def _version(self, version: str) -> None:
        if self.values or self.version is not None or version != VERSION:
            raise recipe_syntax._LineError(f"expected 'version {VERSION}' once, as the first line")
        self.version = version

    def _instruction(self, tokens: list[Any], number: int) -> None:
        head = tokens[0]
        command = head.value if head.kind == "word" else head.text
        args, kwargs = self._arguments(tokens[1:])
        try:
            if command == "model" and args and isinstance(args[0], str) and len(args) == 1:
                value: Any = model_node(args[0], kwargs)
            elif command == "merge" and args and isinstance(args[0], str):
                value = merge_node(args[0], args[1:], kwargs)
            elif command == "dict" and not args:
                value = kwargs
            elif command == "literal":
                raise ValueError("sd-mecha 1.x 'literal' instructions (values tied to a model config, such as "
                                 "block-wise weights) have no mecha counterpart; write them with mecha's blocks()")
            else:
                raise ValueError("expected an sd-mecha 1.x instruction: model \"path\" model_config=... "
                                 "merge_space=..., merge \"method\" &N ..., or dict name=value ...")
        except ValueError as error:
            text = str(error)
            prefix = "" if text.startswith("sd-mecha 1.x") else "sd-mecha 1.x recipe: "
            raise recipe_syntax._LineError(prefix + text) from None
        self.values.append(value)
        self.instruction_lines.append(number)

    def _value(self, tokens: list[Any], i: int, in_list: bool = False) -> tuple[Any, int]:
        if tokens[i].kind == "word" and tokens[i].value == "null":
            return None, i + 1
        return super()._value(tokens, i, in_list)


def model_node(path: str, kwargs: Mapping[str, Any]) -> ModelNode:
    config = kwargs.get("model_config")
    space = kwargs.get("merge_space")
    unknown = set(kwargs) - {"model_config", "merge_space"}
    if unknown:
        raise ValueError(f"unknown model option {sorted(unknown)[0]!r}; expected model_config= and merge_space=")
    if config is None:
        arch, model_type = None, None
    elif config in CONFIGS:
        arch, model_type = CONFIGS[config]
    else:
        raise ValueError(f"sd-mecha 1.x model config {config!r} has no mecha counterpart; mapped: "
                         f"{', '.join(CONFIGS)}")
    expected = "delta" if model_type == "lora" else "weight"
    if space is not None and space != expected:
        raise ValueError(f"a {config or 'model'} file in {space!r} merge space has no mecha counterpart; "
                         f"expected merge_space={expected!r}")
    return ModelNode(path, arch, model_type)


def merge_node(name: str, args: list[Any], kwargs: dict[str, Any]) -> RecipeNode:
    from .plugins import get_plugins
    conversion = _CONVERSION.match(name)
    if conversion:
        return _conversion(conversion.group("source"), conversion.group("target"), args, kwargs)
    mapping = METHODS.get(name)
    if mapping is None:
        from .errors import suggest
        raise ValueError(f"sd-mecha 1.x method {name!r} has no mecha counterpart; "
                         f"{suggest(name, list(METHODS), what='mapped method')}")
    count = len(args) if mapping.inputs is None else mapping.inputs
    inputs, positional = args[:count], args[count:]
    for position, value in enumerate(inputs, 1):
        if not isinstance(value, RecipeNode):
            raise ValueError(f"input {position} of {name!r} must be a model or a merge (&N), got {value!r}")
    if len(positional) > len(mapping.hypers):
        raise ValueError(f"{name!r} takes {len(mapping.hypers)} hyperparameters, got {len(positional)} more values")
    given = dict(zip((h[0] for h in mapping.hypers), positional))
    for key, value in kwargs.items():
        if key in given:
            raise ValueError(f"{key!r} of {name!r} is given twice")
        given[key] = value
    declared = {h[0] for h in mapping.hypers}
    stray = sorted(set(given) - declared)
    if stray:
        raise ValueError(f"sd-mecha 1.x {name!r} has no hyperparameter {stray[0]!r} that maps to mecha; "
                         f"mapped: {', '.join(sorted(declared)) or 'none'}")
    hypers: dict[str, Any] = {}
    for old, default, new in mapping.hypers:
        value = given.get(old, default)
        if isinstance(value, RecipeNode) or isinstance(value, dict):
            raise ValueError(f"{name!r}: a per-key or block-wise value for {old!r} (from 1.x's literal/dict "
                             f"instructions) has no mecha counterpart; write it with mecha's blocks()")
        if new is None:
            if value != default:
                raise ValueError(f"{name!r}: {old}={value!r} has no mecha counterpart (mecha computes it as "
                                 f"{old}={default!r})")
            continue
        hypers[new] = float(value) if old in mapping.bool_to_float else value
    method = get_plugins().merge_methods.get(mapping.mecha)
    return MergeNode.build(method, tuple(inputs), hypers)


def _conversion(source: str, target: str, args: list[Any], kwargs: dict[str, Any]) -> RecipeNode:
    """A 1.x conversion between layouts: mecha reads a kohya LoRA in its model's layout by itself, so
    converting one to the layout of its architecture is the LoRA itself."""
    if len(args) != 1 or kwargs or not isinstance(args[0], ModelNode):
        raise ValueError(f"expected: merge \"convert_'{source}'_to_'{target}'\" &N with &N a model")
    node = args[0]
    arch, model_type = CONFIGS.get(source, (None, None))
    target_arch = CONFIGS.get(target, (None, None))[0]
    if model_type != "lora" or target_arch != arch or node.type != "lora":
        raise ValueError(f"sd-mecha 1.x conversion {source!r} -> {target!r} has no mecha counterpart; mapped: "
                         f"a kohya LoRA to its model's layout (sd1-kohya -> sd1-ldm, sdxl-kohya -> sdxl-sgm)")
    return node
