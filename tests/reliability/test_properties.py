"""Property-based tests: whatever text the recipe parser and whatever bytes the safetensors header
reader are given, they either succeed or raise a :class:`mecha_core.MechaError`, never anything else.

Inputs are random, generated near the grammar (so that deep paths are reached), and mutations of
valid inputs. What parses must also survive a write-and-read round trip; what opens must serve
every tensor it lists with the declared shape and dtype.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mecha_core as mc
from mecha_core.plugins import Plugins, load_plugins, using_plugins

from .conftest import save

FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.data_too_large])


@mc.merge_method
def blend(a: mc.Same, b: mc.Same, *, alpha: float = 0.5, steps: int = 1, exact: bool = False,
          mode: str = "linear") -> mc.Same:
    """Every scalar kind of hyperparameter."""
    return a


@mc.merge_method
def difference(a: mc.Weight, b: mc.Weight) -> mc.Delta:
    return a - b


@mc.merge_method
def add_delta(a: mc.Same, delta: mc.Delta, *, alpha: float = 1.0) -> mc.Same:
    return a + alpha * delta


@mc.merge_method
def mix(*models: mc.Same, weight: tuple[float, ...] = 1.0) -> mc.Same:
    """Variadic, with a per-model hyperparameter."""
    return models[0]


class FuzzMethods:
    """A fixed method set covering every declaration the parser must handle, independent of the library."""

    @mc.hookimpl
    def mecha_merge_methods(self) -> list[mc.MergeMethod]:
        return [blend, difference, add_delta, mix]


@functools.cache
def library() -> Plugins:
    plugins = load_plugins(entry_points=[], allow=[], strict=True)
    plugins.register(FuzzMethods(), "fuzz")
    return plugins


def parse(text: str) -> mc.RecipeNode | None:
    """deserialize() on text (always with a newline, so it is never taken for a path); MechaError is None."""
    with using_plugins(library()):
        try:
            return mc.deserialize(text + "\n", source="fuzz.mecha")
        except mc.MechaError:
            return None


def check_round_trip(recipe: mc.RecipeNode | None) -> None:
    """A recipe that parsed is written and read back unchanged (or refused in words, e.g. an in-memory model)."""
    if recipe is None:
        return
    with using_plugins(library()):
        try:
            text = mc.serialize(recipe)
        except mc.MechaError:
            return
        assert mc.deserialize(text) == recipe, text


# recipes ------------------------------------------------------------------------------------------------
METHOD_NAMES = ["blend", "difference", "add_delta", "mix", "blnd", ""]
WORDS = ["model", "merge", "call", "parameter", "dict", "version", "modle", "alpha", "steps", "exact", "mode",
         "weight", "dtype", "device", "arch", "type", "space", "self", "models", "true", "false", "delta",
         "generic_model_default"]
NUMBERS = ["0", "1", "-1", "0.5", "+.5", "1e3", "1e999", "-0", "9" * 40, "1.", ".", "1e", "0x10", "٣", "²", "nan"]


def _string() -> st.SearchStrategy[str]:
    inner = st.one_of(st.sampled_from(METHOD_NAMES + ["a.safetensors", "weight", "delta", "lora", "base", "fp16",
                                                      "cpu"]),
                      st.text(max_size=8))
    return inner.map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"') | st.just('"unterminated')


TOKEN = st.one_of(
    st.sampled_from(WORDS),
    _string(),
    st.integers(0, 6).map(lambda n: f"&{n}"),
    st.sampled_from(["&99", "&", "&-1", "&x", "&²"]),
    st.sampled_from(NUMBERS),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["=", "[", "]", ",", "#", '"', "\\", "\t", "\x00", "\u2028", "{", "}"]),
    st.sampled_from(WORDS).map(lambda w: w + "="),
)
LINE = st.lists(TOKEN, max_size=9).map(" ".join)
RECIPE_TEXT = st.lists(LINE, min_size=1, max_size=8).map("\n".join)

VALID = ('version 1\n# a valid recipe to mutate\nmodel "a.safetensors" arch="generic"\nmodel "b.safetensors"\n'
         'dict generic_model_default=0.25 generic_model_block_model_layers_0=0.75\n'
         'merge "blend" &0 &1 alpha=&2 steps=3 exact=true mode="x\\"y" dtype="fp32"\nmerge "difference" &1 &0\n'
         'merge "add_delta" &3 &4 alpha=-1e-3\ncall "mix" &5 &0 &1 weight=[0.5, &2, 2]\nparameter "p" "delta"\n'
         'merge "add_delta" &6 &7 device="cpu"\n')
SPECIAL = '"&=[],#\\ \n\t0123456789.-+eE_abcdxyz'


@st.composite
def mutated(draw: st.DrawFn, original: str = VALID, alphabet: str = SPECIAL) -> str:
    """`original` after a few random deletions, insertions and replacements."""
    text = original
    for _ in range(draw(st.integers(1, 6))):
        start = draw(st.integers(0, len(text)))
        stop = draw(st.integers(start, min(len(text), start + 12)))
        insert = draw(st.text(alphabet=alphabet, max_size=6) | st.text(max_size=3))
        text = text[:start] + insert + text[stop:]
    return text


@settings(FUZZ, max_examples=800)
@given(st.text(max_size=300))
def test_random_text_parses_or_raises_a_mecha_error(text):
    check_round_trip(parse(text))


@settings(FUZZ, max_examples=1500)
@given(RECIPE_TEXT)
def test_token_soup_parses_or_raises_a_mecha_error(text):
    check_round_trip(parse(text))


@settings(FUZZ, max_examples=1200)
@given(mutated())
def test_mutated_recipes_parse_or_raise_a_mecha_error(text):
    check_round_trip(parse(text))


def test_the_valid_recipe_to_mutate_is_valid():
    assert parse(VALID) is not None


# safetensors headers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file, rewritten by every example."""
    return tmp_path_factory.mktemp("fuzz") / "fuzz.safetensors"


CODES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
         "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
         "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16,
         "U8": torch.uint8, "BOOL": torch.bool}


def open_and_read(path: Path, data: bytes) -> None:
    """Write `data`, open it: a MechaError, or a file whose every tensor reads with its declared shape and dtype."""
    path.write_bytes(data)
    try:
        file = mc.open_tensor_file(path)
    except mc.MechaError:
        return
    with file:
        for name, info in file.tensors.items():
            tensor = file.read(name)
            assert tuple(tensor.shape) == info.shape and tensor.dtype == CODES[info.dtype]
            assert info.end - info.start == tensor.numel() * tensor.element_size()


def framed(header: bytes, data: bytes, length: int | None = None) -> bytes:
    return (len(header) if length is None else length).to_bytes(8, "little") + header + data


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=20)
DTYPE = st.sampled_from(list(CODES)) | st.sampled_from(["F128", "f32", "", "C64"]) | JSON
DIM = st.integers(0, 5) | st.integers(-3, 2**70)
ENTRY = st.fixed_dictionaries({"dtype": DTYPE, "shape": st.lists(DIM, max_size=4) | JSON,
                               "data_offsets": st.lists(st.integers(-4, 80), min_size=2, max_size=2) | JSON})
HEADER = st.dictionaries(st.text(max_size=5) | st.just("__metadata__"), ENTRY | JSON, max_size=5)


@settings(FUZZ, max_examples=500)
@given(data=st.binary(max_size=200))
def test_random_bytes_open_or_raise_a_mecha_error(target, data):
    open_and_read(target, data)


@settings(FUZZ, max_examples=600)
@given(header=JSON, data=st.binary(max_size=64), length=st.none() | st.integers(0, 2**64 - 1))
def test_random_json_headers_open_or_raise_a_mecha_error(target, header, data, length):
    open_and_read(target, framed(json.dumps(header).encode(), data, length))


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A header whose entries are mostly well-formed, over a data section of random size."""
    header = draw(HEADER)
    raw = json.dumps(header, ensure_ascii=draw(st.booleans())).encode()
    return framed(raw + b" " * draw(st.integers(0, 8)), draw(st.binary(max_size=96)))


@settings(FUZZ, max_examples=1500)
@given(data=near_valid())
def test_near_valid_headers_open_or_raise_a_mecha_error(target, data):
    open_and_read(target, data)


@functools.cache
def valid_file(folder: str) -> bytes:
    path = Path(folder) / "valid.safetensors"
    save({"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16),
          "empty": torch.zeros(0, 2), "ids": torch.arange(3)}, path, metadata={"k": "v"})
    return path.read_bytes()


@st.composite
def mutated_file(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[at:at + draw(st.integers(1, 8))]
    return bytes(data)


@settings(FUZZ, max_examples=1200)
@given(data=st.data())
def test_mutated_files_open_or_raise_a_mecha_error(target, data):
    open_and_read(target, data.draw(mutated_file(valid_file(str(target.parent)))))


def test_the_valid_file_to_mutate_is_valid(target):
    target.write_bytes(valid_file(str(target.parent)))
    with mc.open_tensor_file(target) as f:
        assert f.read("a.weight").tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and f.metadata == {"k": "v"}
