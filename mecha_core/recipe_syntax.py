"""The ``.mecha`` grammar: tokens, values and the parser building recipe nodes line by line.

Below :mod:`mecha_core.recipe_format` (which reads and writes recipes) and
:mod:`mecha_core.sd_mecha1_recipes` (whose parser extends this one for sd-mecha 1.x recipes), so that
the format module can hand a 1.x recipe to that parser without an import cycle.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
from typing import Any

from .errors import MechaError, RecipeSyntaxError, suggest
from .method_spec import MethodSpec
from .plugins import Plugins, get_plugins
from .recipe import NODE_OPTIONS, MergeNode, ModelNode, ParameterNode, RecipeLine, RecipeNode

FORMAT_VERSION = "1"
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$", re.ASCII)
_INTEGER = re.compile(r"^[+-]?\d+$", re.ASCII)
_REFERENCE = re.compile(r"^&\d{1,9}$", re.ASCII)
MAX_INTEGER_DIGITS = 30  # beyond any real seed or count; keeps int() far from Python's 4300-digit limit
_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_SPECIAL = set('="[],#')
_VERSION_LINE = re.compile(r"^\s*version\s+(\S+)\s*(?:#.*)?$")


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # string, number, ref, bool, word, punct, junk
    value: Any
    text: str


class _LineError(Exception):
    pass


def _tokenize(line: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(line):
        char = line[i]
        if char.isspace():
            i += 1
        elif char == "#":
            break
        elif char == '"':
            value, i = _read_string(line, i)
            tokens.append(_Token("string", value, '"..."'))
        elif char in _SPECIAL:
            tokens.append(_Token("punct", char, char))
            i += 1
        else:
            start = i
            while i < len(line) and not line[i].isspace() and line[i] not in _SPECIAL:
                i += 1
            tokens.append(_classify(line[start:i]))
    return tokens


def _read_string(line: str, start: int) -> tuple[str, int]:
    out = []
    i = start + 1
    while i < len(line):
        char = line[i]
        if char == "\\":
            if i + 1 >= len(line):
                break
            out.append(line[i + 1])
            i += 2
        elif char == '"':
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1
    raise _LineError("unterminated string: a double quote is missing")


def _classify(text: str) -> _Token:
    if text.startswith("&"):
        if not _REFERENCE.match(text):
            raise _LineError(f"bad reference {_shorten(text)!r}: expected & followed by an instruction number, "
                             f"like &0")
        return _Token("ref", int(text[1:]), text)
    if _NUMBER.match(text):
        return _Token("number", _number(text), _shorten(text))
    if text in ("true", "false"):
        return _Token("bool", text == "true", text)
    if _WORD.match(text):
        return _Token("word", text, _shorten(text))
    return _Token("junk", text, _shorten(text))  # refused by the parser, which knows what it expected


def _number(text: str) -> int | float:
    if _INTEGER.match(text):
        if len(text.lstrip("+-")) > MAX_INTEGER_DIGITS:
            raise _LineError(f"number {_shorten(text)} is too large; expected at most {MAX_INTEGER_DIGITS} digits")
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise _LineError(f"number {_shorten(text)} is out of range; expected a finite number")
    return value


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Parser:
    def __init__(self, source: str, plugins: Plugins | None = None) -> None:
        self.source = source
        self.plugins = plugins or get_plugins()
        self.values: list[Any] = []
        self.instruction_lines: list[int] = []
        self.version: str | None = None

    def parse(self, text: str) -> RecipeNode:
        # "\n" only: str.splitlines() also breaks at form feeds and other separators, and the line
        # numbers in messages would then disagree with the user's editor
        text = text.removeprefix("\ufeff")  # the byte-order mark some Windows editors write
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        for number, line in enumerate(lines, 1):
            try:
                version = _VERSION_LINE.match(line)
                if version:
                    self._version(version.group(1))
                    continue
                tokens = _tokenize(line)
                if tokens:
                    self._instruction(tokens, number)
                    if isinstance(self.values[-1], MergeNode):
                        self.values[-1].origin = RecipeLine(self.source, number, line)
            except _LineError as error:
                raise RecipeSyntaxError(str(error), line_number=number, line=line, source=self.source) from None
            except MechaError as error:
                raise RecipeSyntaxError(str(error), line_number=number, line=line, source=self.source) from None
        if not self.values:
            raise RecipeSyntaxError("the recipe is empty: it has no instruction", source=self.source)
        result = self.values[-1]
        if not isinstance(result, RecipeNode):
            number = self.instruction_lines[-1]
            raise RecipeSyntaxError("the last instruction must be a model, a parameter or a merge, not a dict",
                                    line_number=number, line=lines[number - 1], source=self.source)
        return result

    def _version(self, version: str) -> None:
        """Read a version line before tokenizing, so that any version, even sd-mecha 1.x's 0.1.0, is named."""
        if self.values or self.version is not None:
            raise _LineError("'version' may only be the first instruction")
        if version != FORMAT_VERSION:
            raise _LineError(f"recipe format version {_shorten(version)} is not supported; expected version "
                             f"{FORMAT_VERSION}, sd-mecha 1.x's version 0.1.0, or sd-mecha 0.0.x recipes (which have "
                             f"no version line)")
        self.version = version

    def _instruction(self, tokens: list[_Token], number: int) -> None:
        head = tokens[0]
        if head.kind == "junk":
            raise _LineError(f"unexpected text {head.text!r}; an instruction starts with a command (model, parameter, "
                             f"merge, dict)")
        if head.kind != "word":
            raise _LineError(f"an instruction starts with a command (model, parameter, merge, dict), not {head.text!r}")
        command = head.value
        if command == "version":
            raise _LineError(f"expected: version {FORMAT_VERSION}")
        args, kwargs = self._arguments(tokens[1:])
        if command == "model":
            value: Any = self._model(args, kwargs)
        elif command == "parameter":
            value = self._parameter(args, kwargs)
        elif command in ("merge", "call"):
            value = self._merge(args, kwargs)
        elif command == "dict":
            if args:
                raise _LineError("dict takes only name=value pairs")
            value = kwargs
        else:
            raise _LineError(f"unknown command {_shorten(command)!r}; {suggest(command, ['model', 'parameter', 'merge', 'dict'], what='command')}")
        self.values.append(value)
        self.instruction_lines.append(number)

    def _arguments(self, tokens: list[_Token]) -> tuple[list[Any], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token.kind == "word" and i + 1 < len(tokens) and tokens[i + 1].text == "=":
                if i + 2 >= len(tokens):
                    raise _LineError(f"expected a value after '{token.value}='")
                if token.value in kwargs:
                    raise _LineError(f"{token.value!r} is given twice")
                kwargs[token.value], i = self._value(tokens, i + 2)
            else:
                if kwargs:
                    raise _LineError(f"positional value {token.text!r} after name=value arguments")
                value, i = self._value(tokens, i)
                args.append(value)
        return args, kwargs

    def _value(self, tokens: list[_Token], i: int, in_list: bool = False) -> tuple[Any, int]:
        token = tokens[i]
        if token.kind in ("string", "number", "bool"):
            return token.value, i + 1
        if token.kind == "ref":
            if token.value >= len(self.values):
                available = f"&0..&{len(self.values) - 1}" if self.values else "none yet"
                raise _LineError(f"reference &{token.value} points to a later or missing instruction "
                                 f"(available here: {available})")
            return self.values[token.value], i + 1
        if token.text == "[":
            if in_list:
                raise _LineError("lists cannot be nested; expected [value, value, ...] with one value per model")
            items = []
            i += 1
            while i < len(tokens) and tokens[i].text != "]":
                item, i = self._value(tokens, i, in_list=True)
                items.append(item)
                if i < len(tokens) and tokens[i].text == ",":
                    i += 1
            if i >= len(tokens):
                raise _LineError("unterminated list: a ']' is missing")
            return items, i + 1
        what = "text " if token.kind == "junk" else ""
        raise _LineError(f"unexpected {what}{token.text!r}; expected a value (number, \"string\", &N, true, false, "
                         f"[list])")

    def _model(self, args: list[Any], kwargs: dict[str, Any]) -> ModelNode:
        if not args or not isinstance(args[0], str):
            raise _LineError('expected: model "path" ["arch" ["type"]]')
        if len(args) > 3:
            raise _LineError('too many values; expected: model "path" ["arch" ["type"]]')
        unknown = set(kwargs) - {"arch", "type", "rename"}
        if unknown:
            raise _LineError(f"unknown option {sorted(unknown)[0]!r} for model; expected arch=, type= or rename=")
        arch = kwargs.get("arch", args[1] if len(args) > 1 else None)
        model_type = kwargs.get("type", args[2] if len(args) > 2 else None)
        rename = kwargs.get("rename")
        for name, value in (("arch", arch), ("type", model_type), ("rename", rename)):
            if value is not None and not isinstance(value, str):
                raise _LineError(f"{name} must be a string")
        return ModelNode(args[0], arch, model_type, rename)

    def _parameter(self, args: list[Any], kwargs: dict[str, Any]) -> ParameterNode:
        """``parameter "name" ["space" ["arch"]]``: the third value is the architecture sd-mecha 0.0.x wrote
        for a parameter; it is read and not kept, since the models that fill the parameter are detected
        (or given their arch) when they are opened."""
        if not args or not isinstance(args[0], str) or len(args) > 3:
            raise _LineError('expected: parameter "name" ["weight"|"delta" ["arch"]]')
        space = kwargs.pop("space", args[1] if len(args) > 1 else "weight")
        arch = kwargs.pop("arch", args[2] if len(args) > 2 else None)
        if kwargs:
            raise _LineError(f"unknown option {sorted(kwargs)[0]!r} for parameter; expected space= or arch=")
        if not isinstance(space, str):
            raise _LineError(f'the space of a parameter is "weight" or "delta", not {space!r}')
        if arch is not None and not isinstance(arch, str):
            raise _LineError(f'the architecture of a parameter is a "string", not {arch!r}')
        return ParameterNode(args[0], space)

    def _merge(self, args: list[Any], kwargs: dict[str, Any]) -> MergeNode:
        if not args or not isinstance(args[0], str):
            raise _LineError('expected: merge "method" &0 &1 name=value ...')
        method = self.plugins.merge_methods.get(args[0])
        inputs = []
        for position, value in enumerate(args[1:], 1):
            if not isinstance(value, RecipeNode):
                raise _LineError(f"input {position} of {args[0]!r} must be a reference to a model or merge (&N), "
                                 f"got {value!r}")
            inputs.append(value)
        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", None)
        if self.version is None:
            _drop_undeclared_hypers(method, kwargs, self.source)
        for name, value in (("device", device), ("dtype", dtype)):
            if value is not None and not isinstance(value, str):
                raise _LineError(f'{name} must be a "string", not {value!r}')
        return MergeNode.build(method, tuple(inputs), kwargs, device=device, dtype=dtype, plugins=self.plugins)


def _drop_undeclared_hypers(method: MethodSpec, kwargs: dict[str, Any], source: str) -> None:
    """sd-mecha 0.0.x recipes (no version line): a hyperparameter the method does not declare, and that is
    no near-miss of one it does, is dropped with a warning naming it, as 0.0.x did (its methods took
    ``**kwargs``): its own example ``incompatible_fusion.mecha`` passes ``beta=`` to ``rotate``. A near-miss
    (``alpah=``) is left for the method to refuse with its suggestion; recipes with a version line refuse
    every undeclared name."""
    declared = [spec.name for spec in method.hypers]
    foreign = [name for name in kwargs if name not in declared and name not in NODE_OPTIONS
               and not difflib.get_close_matches(name, declared, n=1, cutoff=0.6)]
    for name in foreign:
        del kwargs[name]
        logging.getLogger("mecha").warning(
            "%s: %s has no hyperparameter %r; ignored as sd-mecha 0.0.x did (a recipe with a 'version 1' line "
            "refuses it)", source, method.name, name)
