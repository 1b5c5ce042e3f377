"""Bad model files are refused when opened, in one line naming the file and the problem, before any
output exists; zero-size tensors and non-ASCII keys work."""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors
import torch

import mecha_core as mc
from mecha_core.tensor_files import MAX_HEADER_BYTES

from .conftest import error_line, recipe_file, run, save, snapshot, temp_files, write_raw

DTYPE_CODES = ", ".join(["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U64", "U32", "U16",
                 "U8", "BOOL"])
SIXTEEN = bytes(range(16))


def entry(dtype: str = "F32", shape: list[int] | None = None, offsets: list[int] | None = None) -> dict:
    return {"dtype": dtype, "shape": [2, 2] if shape is None else shape,
            "data_offsets": [0, 16] if offsets is None else offsets}


def good_bytes(tmp: Path) -> bytes:
    return save({"w": torch.arange(4.0).reshape(2, 2), "b": torch.zeros(3)}, tmp / "source.bin").read_bytes()


# name -> (writer of the bad file, the problem the message states after "not a valid safetensors file: ")
BadFile = Callable[[Path], None]
CASES: dict[str, tuple[BadFile, str]] = {
    "empty file": (lambda p: p.write_bytes(b""), "the file is 0 bytes, too short to hold a header"),
    "truncated in the length field": (lambda p: p.write_bytes(b"\x10\x00\x00"),
                                      "the file is 3 bytes, too short to hold a header"),
    "truncated in the header": (lambda p: p.write_bytes(good_bytes(p.parent)[:40]),
                                "the header claims {header} bytes but the file holds only 32 after the length "
                                "field (truncated file?)"),
    "truncated in the data": (lambda p: p.write_bytes(good_bytes(p.parent)[:-5]),
                              "tensor 'b' lies at bytes 16..28, outside the 23-byte data section"),
    "header length beyond the file": (lambda p: write_raw(p, {"w": entry()}, SIXTEEN, length=10_000),
                                      "the header claims 10000 bytes but the file holds only {rest} after the "
                                      "length field (truncated file?)"),
    "absurd header length": (lambda p: write_raw(p, {"w": entry()}, SIXTEEN, length=2**64 - 1),
                             f"the header claims {2**64 - 1} bytes (more than {MAX_HEADER_BYTES} is not a real "
                             f"header)"),
    "header not JSON": (lambda p: write_raw(p, b"{not json}", SIXTEEN),
                        "the header is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
                        "(char 1))"),
    "header not UTF-8": (lambda p: write_raw(p, b'{"\xff": 1}', SIXTEEN), "the header is not UTF-8 text"),
    "header an array": (lambda p: write_raw(p, b"[1, 2]", SIXTEEN), "the header is a JSON array, expected an object"),
    "header a string": (lambda p: write_raw(p, b'"w"', SIXTEEN), "the header is a JSON string, expected an object"),
    "header nested too deeply": (lambda p: write_raw(p, b"[" * 100_000, SIXTEEN),
                                 "the header nests JSON arrays or objects too deeply"),
    "header number too long": (lambda p: write_raw(p, b'{"w": {"shape": [' + b"9" * 5000 + b"]}}", SIXTEEN),
                               "the header holds a number too long to be real"),
    "tensor listed twice": (lambda p: write_raw(p, b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                                                   b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}',
                                                SIXTEEN), "the header lists 'w' twice"),
    "entry not an object": (lambda p: write_raw(p, {"w": [0, 16]}, SIXTEEN),
                            "entry for tensor 'w' is a JSON array, expected an object"),
    "offsets beyond the data": (lambda p: write_raw(p, {"w": entry(offsets=[0, 1000])}, SIXTEEN),
                                "tensor 'w' lies at bytes 0..1000, outside the 16-byte data section"),
    "negative offset": (lambda p: write_raw(p, {"w": entry(offsets=[-16, 0])}, SIXTEEN),
                        "tensor 'w' lies at bytes -16..0, outside the 16-byte data section"),
    "offsets reversed": (lambda p: write_raw(p, {"w": entry(offsets=[16, 0])}, SIXTEEN),
                         "tensor 'w' has data_offsets [16, 0] that end before they start"),
    "offsets not integers": (lambda p: write_raw(p, {"w": entry(offsets=[0, 16.0])}, SIXTEEN),
                             "tensor 'w' has invalid data_offsets [0, 16.0]; expected [start, end]"),
    "offsets overlapping": (lambda p: write_raw(p, {"a": entry("F32", [2], [0, 8]), "b": entry("F32", [2], [4, 12])},
                                                SIXTEEN), "tensors 'a' and 'b' overlap in the data section"),
    "unknown dtype": (lambda p: write_raw(p, {"w": entry("F128")}, SIXTEEN),
                      f"tensor 'w' has unknown dtype 'F128'; expected one of {DTYPE_CODES}"),
    "dtype not a string": (lambda p: write_raw(p, {"w": entry([])}, SIXTEEN),
                           f"tensor 'w' has unknown dtype []; expected one of {DTYPE_CODES}"),
    "shape too small for the span": (lambda p: write_raw(p, {"w": entry("F32", [3])}, SIXTEEN),
                                     "tensor 'w' of shape [3] and dtype F32 needs 12 bytes but spans 16"),
    "dtype too wide for the span": (lambda p: write_raw(p, {"w": entry("F64")}, SIXTEEN),
                                    "tensor 'w' of shape [2, 2] and dtype F64 needs 32 bytes but spans 16"),
    "shape astronomically large": (lambda p: write_raw(p, {"w": entry("F32", [2**62, 2**62])}, SIXTEEN),
                                   f"tensor 'w' of shape [{2**62}, {2**62}] and dtype F32 needs more than 2**64 bytes "
                                   f"but spans 16"),
    "negative dimension": (lambda p: write_raw(p, {"w": entry("F32", [-4])}, SIXTEEN),
                           "tensor 'w' has an invalid shape [-4]; expected a list of at most 64 non-negative "
                           "integers"),
    "too many dimensions": (lambda p: write_raw(p, {"w": entry("F32", [1] * 65, [0, 4])}, SIXTEEN),
                            f"tensor 'w' has an invalid shape {repr([1] * 65)[:77]}...; expected a list of at most 64 "
                            f"non-negative integers"),
    "metadata not strings": (lambda p: write_raw(p, {"__metadata__": {"a": 1}, "w": entry()}, SIXTEEN),
                             "__metadata__ must map strings to strings"),
}


def _expected(problem: str, path: Path) -> str:
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    return problem.format(header=header, rest=len(data) - 8)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # a merge without -o would write here
    return tmp_path


@pytest.mark.parametrize("case", CASES)
def test_a_bad_file_is_refused_by_merge_before_any_output(plugins, folder, capsys, case):
    make, problem = CASES[case]
    good = save({"w": torch.ones(2, 2), "b": torch.zeros(3)}, folder / "good.safetensors")
    bad = folder / "bad.safetensors"
    make(bad)
    (folder / "source.bin").unlink(missing_ok=True)
    recipe = recipe_file(folder, f'model "{good}"\nmodel "{bad}"\nmerge "weighted_sum" &0 &1\n')
    before = snapshot(folder)
    status, out, err = run(capsys, "merge", recipe, "-o", folder / "out.safetensors")
    assert status == 1 and out == ""
    assert error_line(err) == f"mecha: error: {bad}: not a valid safetensors file: {_expected(problem, bad)}"
    assert snapshot(folder) == before  # no output, no temporary file, inputs byte-identical


@pytest.mark.parametrize("case", CASES)
def test_a_bad_file_is_refused_by_inspect_and_the_api(plugins, folder, capsys, case):
    make, problem = CASES[case]
    bad = folder / "bad.safetensors"
    make(bad)
    expected = f"{bad}: not a valid safetensors file: {_expected(problem, bad)}"
    status, _, err = run(capsys, "inspect", bad)
    assert status == 1 and error_line(err) == f"mecha: error: {expected}"
    with pytest.raises(mc.ModelFileError) as caught:
        mc.open_tensor_file(bad)
    assert str(caught.value) == expected


def test_an_absurd_header_length_is_refused_without_allocating(folder):
    """A header claiming just under the limit, in a small file: nothing near that size is allocated."""
    bad = write_raw(folder / "bad.safetensors", {"w": entry()}, SIXTEEN, length=MAX_HEADER_BYTES - 1)
    tracemalloc.start()
    try:
        with pytest.raises(mc.ModelFileError, match="truncated file"):
            mc.open_tensor_file(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_pickle_named_safetensors_is_recognised(plugins, folder, capsys):
    fake = folder / "model.safetensors"
    torch.save({"w": torch.ones(2)}, fake)  # a zip archive holding a pickle
    status, _, err = run(capsys, "inspect", fake)
    assert status == 1
    assert error_line(err) == (f"mecha: error: {fake}: this is a pickle (PyTorch .ckpt/.pt) file, not safetensors; "
                               f"mecha never unpickles model files (a pickle can run code); convert it to "
                               f".safetensors first, e.g. with `mecha convert FILE` or safetensors.torch.save_file("
                               f"torch.load(FILE, weights_only=True), 'out.safetensors')")


@pytest.mark.parametrize("length", [0x80, 0x280, 0x580])
def test_a_header_length_that_starts_like_a_pickle_is_still_safetensors(folder, length):
    """0x80 0x02 (pickle protocol 2's first bytes) is also how a 640-byte header length starts."""
    header = json.dumps({"w": entry()}).encode()
    path = write_raw(folder / "m.safetensors", header + b" " * (length - len(header)), SIXTEEN)
    assert path.read_bytes()[:2] == bytes([0x80, length >> 8])
    with mc.open_tensor_file(path) as f:
        assert f.read("w").shape == (2, 2)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".pkl"])
def test_pickle_suffixes_are_refused_without_reading(plugins, folder, capsys, suffix, monkeypatch):
    pickled = folder / f"model{suffix}"
    pickled.write_bytes(b"\x80\x04 anything")
    reads: list[object] = []
    monkeypatch.setattr(os, "pread", lambda *a: reads.append(a) or b"")
    good = save({"w": torch.ones(2)}, folder / "good.safetensors")
    recipe = recipe_file(folder, f'model "{pickled}"\nmodel "{good}"\nmerge "weighted_sum" &0 &1\n')
    before = snapshot(folder)
    status, _, err = run(capsys, "merge", recipe, "-o", folder / "out.safetensors")
    assert status == 1 and reads == []
    assert error_line(err).startswith(f"mecha: error: {pickled}: {suffix} files are pickles; mecha never unpickles "
                                      f"model files (a pickle can run code); convert it to .safetensors first, e.g. "
                                      f"with `mecha convert FILE`")
    assert snapshot(folder) == before


def test_a_folder_and_a_pipe_are_refused(plugins, folder, capsys):
    (folder / "dir.safetensors").mkdir()
    status, _, err = run(capsys, "inspect", folder / "dir.safetensors")
    assert status == 1 and error_line(err) == f"mecha: error: {folder / 'dir.safetensors'}: is a folder, not a model file"
    os.mkfifo(folder / "pipe.safetensors")  # opening it must not wait for a writer
    status, _, err = run(capsys, "inspect", folder / "pipe.safetensors")
    assert status == 1
    assert error_line(err) == (f"mecha: error: {folder / 'pipe.safetensors'}: is not a regular file (a device, pipe "
                               f"or socket?)")


def test_a_key_whose_shape_differs_between_models_is_refused_before_writing(plugins, folder, capsys):
    a = save({"w": torch.ones(2, 2), "b": torch.zeros(3)}, folder / "a.safetensors")
    b = save({"w": torch.ones(4), "b": torch.zeros(3)}, folder / "b.safetensors")
    out = folder / "out.safetensors"
    out.write_bytes(b"the previous output")
    recipe = recipe_file(folder, f'model "{a}"\nmodel "{b}"\nmerge "weighted_sum" &0 &1\n')
    before = snapshot(folder)
    status, _, err = run(capsys, "merge", recipe, "-o", out)
    assert status == 1
    assert error_line(err) == f"mecha: error: key 'w' has different shapes in the inputs: {a} [2, 2], {b} [4]"
    assert snapshot(folder) == before


def test_zero_size_tensors_merge(plugins, folder, capsys):
    a = save({"empty": torch.zeros(0, 3), "none": torch.zeros(0), "w": torch.full((2,), 2.0)}, folder / "a.safetensors")
    b = save({"empty": torch.zeros(0, 3), "none": torch.zeros(0), "w": torch.full((2,), 4.0)}, folder / "b.safetensors")
    recipe = recipe_file(folder, f'model "{a}"\nmodel "{b}"\nmerge "weighted_sum" &0 &1 alpha=0.5\n')
    status, _, err = run(capsys, "merge", recipe, "-o", folder / "out.safetensors", "--save-dtype", "fp32", "--quiet")
    assert status == 0, err
    with safetensors.safe_open(str(folder / "out.safetensors"), "pt") as f:
        assert f.get_tensor("empty").shape == (0, 3) and f.get_tensor("none").shape == (0,)
        assert f.get_tensor("w").tolist() == [3.0, 3.0]
    assert temp_files(folder) == []


def test_a_file_of_only_zero_size_tensors_opens(folder):
    path = write_raw(folder / "z.safetensors", {"e": entry("F16", [0, 5], [0, 0]), "f": entry("I64", [0], [0, 0])})
    with mc.open_tensor_file(path) as f:
        assert f.read("e").shape == (0, 5) and f.read("e").dtype == torch.float16
        assert f.read("f").shape == (0,)


def test_a_tensor_read_before_the_file_is_closed_stays_valid(folder):
    """Reads are views of a memory map; closing the file must not pull the memory from under them."""
    path = save({"w": torch.arange(6, dtype=torch.float32)}, folder / "m.safetensors")
    with mc.open_tensor_file(path) as f:
        whole, part = f.read("w"), f.read_flat("w", 2, 5)
    assert whole.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and part.tolist() == [2.0, 3.0, 4.0]
    with pytest.raises(mc.ModelFileError, match="file was closed"):
        f.read("w")


NON_ASCII = ["ключ.вес", "层.0.权重", "café.weight", "emoji😀.bias", "tab\tand\"quote"]


def test_non_ascii_keys_merge_and_round_trip(plugins, folder, capsys):
    a = save({k: torch.full((3,), float(i)) for i, k in enumerate(NON_ASCII)}, folder / "a.safetensors")
    b = save({k: torch.full((3,), float(i) + 2) for i, k in enumerate(NON_ASCII)}, folder / "b.safetensors")
    recipe = recipe_file(folder, f'model "{a}"\nmodel "{b}"\nmerge "weighted_sum" &0 &1 alpha=0.5\n')
    status, _, err = run(capsys, "merge", recipe, "-o", folder / "out.safetensors", "--save-dtype", "fp32", "--quiet")
    assert status == 0, err
    with safetensors.safe_open(str(folder / "out.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(NON_ASCII)
        for i, key in enumerate(NON_ASCII):
            assert f.get_tensor(key).tolist() == [i + 1.0] * 3
    status, out, _ = run(capsys, "inspect", folder / "out.safetensors", "--json")
    assert status == 0 and json.loads(out)["keys"] == len(NON_ASCII)


def test_any_data_bytes_are_served_under_a_valid_header(folder):
    """The data section's contents are not interpreted (NaN bit patterns are reported while merging)."""
    path = write_raw(folder / "noise.safetensors", {"w": entry()}, os.urandom(16))
    with mc.open_tensor_file(path) as f:
        assert f.read("w").shape == (2, 2)


def test_inspect_does_not_let_a_file_drive_the_terminal(plugins, folder, capsys):
    """Key names and the stored recipe come from the file: escape sequences are shown, not obeyed."""
    path = save({"\x1b[2Jwipe": torch.ones(1), "ok": torch.ones(1)}, folder / "m.safetensors",
                metadata={"mecha_recipe": "version 1\nmodel \"\x1b]0;owned\x07\"\u2028fake line\n"})
    status, out, _ = run(capsys, "inspect", path, "-v")
    assert status == 0
    assert "\x1b" not in out and "\x07" not in out and "\u2028" not in out
    assert '  model "\\x1b]0;owned\\x07"\\u2028fake line' in out.splitlines()


def test_an_in_memory_model_holding_what_a_file_cannot_is_refused(plugins):
    with pytest.raises(mc.ModelFileError, match=r"^<in-memory model>: key 'step' holds a int, expected a tensor$"):
        mc.merge(mc.weighted_sum({"w": torch.ones(2), "step": 5}, {"w": torch.ones(2)}))
    with pytest.raises(mc.ModelFileError, match=r"key 'z' has dtype complex64, which safetensors cannot store"):
        mc.merge(mc.weighted_sum({"z": torch.ones(2, dtype=torch.complex64)}, {"z": torch.ones(2)}))
