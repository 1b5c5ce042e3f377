"""The ``.mecha`` text format: one instruction a line, ``&N`` is the value built by instruction N.

Reads the original sd-mecha 0.0.x grammar unchanged::

    model "a.safetensors" "sd1" "base"
    parameter "b" "DELTA"
    dict sd1_unet_default=0.5 sd1_txt_block_in2=0.75
    merge "add_difference" &0 &1 alpha=&2

and extends it: ``arch``/``type`` optional or as keywords (``model "a" arch="sd1"``), ``rename=`` on a
``model`` (see ``mecha_core.key_rename``), ``#`` comments,
blank lines, ``\\"`` escapes, ``true``/``false``, lists ``[0.5, &2]`` for per-model hyperparameters,
``device=``/``dtype=`` on a ``merge``, ``call`` as a synonym of ``merge``, and a ``version`` line
first. ``&N`` counts instructions from 0; comments, blank lines and the version line are not
instructions. The last instruction is the recipe.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import RecipeError
from .plugins import Plugins
from .recipe import MergeNode, ModelNode, ParameterNode, RecipeNode, walk
from .recipe_syntax import FORMAT_VERSION, _Parser
from .sd_mecha1_recipes import is_sd_mecha1, parse_sd_mecha1


def deserialize(recipe: str | os.PathLike[str] | Iterable[str], *, source: str | None = None,
                plugins: Plugins | None = None) -> RecipeNode:
    """A recipe from ``.mecha`` text, the path of a ``.mecha`` file, or its lines (``f.readlines()``).

    A string holding no newline that names an existing file is read as a path. These are the three
    forms sd-mecha 0.0.x's ``deserialize`` accepted. sd-mecha 1.x recipes (``version 0.1.0``) are
    translated where their methods map to mecha's (see :mod:`mecha_core.sd_mecha1_recipes`). Merge
    methods and model types are looked up in `plugins` (None: the plugin set in use).
    """
    if not isinstance(recipe, (str, os.PathLike)):
        lines = list(recipe)
        if not all(isinstance(line, str) for line in lines):
            raise RecipeError("expected a recipe as text, a path, or a list of lines (strings)")
        return _parse("\n".join(line.removesuffix("\n") for line in lines), source or "recipe", plugins)
    if isinstance(recipe, os.PathLike) or ("\n" not in recipe and (recipe.endswith(".mecha") or os.path.isfile(recipe)
                                                                   or os.path.isdir(recipe))):
        path = Path(recipe)
        if path.is_dir():
            raise RecipeError(f"{path}: is a folder, not a recipe file")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError(f"{path}: no such recipe file") from None
        except UnicodeDecodeError:
            raise RecipeError(f"{path}: not a text file (expected a .mecha recipe)") from None
        except OSError as error:
            raise RecipeError(f"{path}: cannot read: {error.strerror}") from None
        return _parse(text, source or str(path), plugins)
    return _parse(recipe, source or "recipe", plugins)


def _parse(text: str, source: str, plugins: Plugins | None) -> RecipeNode:
    if is_sd_mecha1(text):
        return parse_sd_mecha1(text, source)
    return _Parser(source, plugins).parse(text)


def serialize(recipe: RecipeNode) -> str:
    """The ``.mecha`` text of a recipe: a version line, then one instruction per distinct node."""
    lines: list[str] = []
    refs: dict[int, str] = {}
    index_of: dict[str, str] = {}

    def add(line: str) -> str:
        if line not in index_of:
            lines.append(line)
            index_of[line] = f"&{len(lines) - 1}"
        return index_of[line]

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            if not math.isfinite(v):
                raise RecipeError(f"cannot write the non-finite number {v} in a recipe")
            return repr(v)
        if isinstance(v, str):
            return _quote(v)
        if isinstance(v, Mapping):
            return add("dict " + " ".join(f"{k}={value(x)}" for k, x in v.items()))
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise RecipeError(f"cannot write {type(v).__name__} {v!r} in a recipe")

    for node in walk(recipe):
        if isinstance(node, ModelNode):
            if node.is_dict:
                raise RecipeError("an in-memory model cannot be written to a .mecha recipe; save it to a "
                                  ".safetensors file and use its path")
            line = "model " + _quote(str(node.source))
            line += "".join(f" {k}={_quote(v)}" for k, v in (("arch", node.arch), ("type", node.type),
                                                            ("rename", node.rename)) if v)
        elif isinstance(node, ParameterNode):
            line = f"parameter {_quote(node.name)} {_quote(node.space.value)}"
        elif isinstance(node, MergeNode):
            parts = ["merge", _quote(node.method.name)] + [refs[id(i)] for i in node.inputs]
            parts += [f"{k}={value(v)}" for k, v in node.hypers.items() if v is not None]
            parts += [f"{k}={_quote(v)}" for k, v in (("device", node.device), ("dtype", node.dtype)) if v]
            line = " ".join(parts)
        else:
            raise RecipeError(f"cannot serialize {node!r}")
        refs[id(node)] = add(line)
    return "\n".join([f"version {FORMAT_VERSION}"] + lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
