"""Items 2-6 of issue 19: exit 0 (or a returned path) means the output exists, is complete and was
computed from consistent inputs. Closed standard error, a plugin calling sys.exit(), an input
rewritten or truncated during the merge, a recipe too large for a header, a key that is a float in
one input and an integer in another: each either works or is a one-line error, never a silent 0."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors
import torch

import mecha_core as mc
from mecha_core import output_file

from .conftest import error_line, recipe_file, run, save, snapshot, temp_files

merge_module = importlib.import_module("mecha_core.merge")  # the package's merge is the function


@pytest.fixture
def folder(plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name, value in (("a", 1.0), ("b", 3.0)):
        save({f"k{i}": torch.full((64, 64), value + i) for i in range(4)}, tmp_path / f"{name}.safetensors")
    recipe_file(tmp_path, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1 alpha=0.5\n')
    return tmp_path


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ, MECHA_LOAD_PLUGINS="methods", MECHA_CONFIG=str(folder / "no-config.toml"))
    env.pop("MECHA_MODELS_DIR", None)
    return env


def _expected(folder: Path, name: str = "out.safetensors") -> None:
    with safetensors.safe_open(str(folder / name), "pt") as f:
        assert [f.get_tensor(f"k{i}").unique().tolist() for i in range(4)] == [[2.0 + i] for i in range(4)]


# 2 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("redirect", ["closed pipe", "closed descriptor"])
def test_a_dead_standard_error_does_not_stop_the_merge(folder, redirect):
    """``mecha merge ... 2>&1 | head -c1``: the progress bar writes into a pipe nobody reads."""
    command = [sys.executable, "-m", "mecha_core", "merge", "r.mecha", "-o", "out.safetensors",
               "--save-dtype", "fp32"]
    if redirect == "closed pipe":
        read, write = os.pipe()
        os.close(read)
        try:
            result = subprocess.run(command, cwd=folder, env=_env(folder), stdout=write, stderr=write, timeout=120)
        finally:
            os.close(write)
    else:
        result = subprocess.run(["sh", "-c", 'exec "$@" 2>&- >&-', "sh", *command], cwd=folder, env=_env(folder),
                                timeout=120)
    assert result.returncode == 0
    _expected(folder)
    assert temp_files(folder) == []


# 3 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("exit_", [lambda: sys.exit(0), lambda: sys.exit(), lambda: (_ for _ in ()).throw(SystemExit(3))])
def test_a_merge_method_cannot_decide_the_exit_status(folder, capsys, plugins, threads, exit_):
    @mc.merge_method
    def quitter(a: mc.Same, b: mc.Same) -> mc.Same:
        exit_()
        return a

    class Plugin:
        @mc.hookimpl
        def mecha_merge_methods(self):
            return [quitter]

    plugins.register(Plugin(), "quitting")
    recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "quitter" &0 &1\n')
    before = snapshot(folder)
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet", "--threads", threads)
    assert status == 1
    line = error_line(err)
    assert line.startswith("mecha: error: merge method 'quitter' from plugin 'quitting' failed on key 'k"), line
    assert "SystemExit" in line
    assert snapshot(folder) == before


# 4 -------------------------------------------------------------------------------------------------
def _rewriting_method(plugins, action):
    """A merge method that changes input b.safetensors once, while the merge reads it."""
    done = []

    @mc.merge_method
    def meddle(a: mc.Same, b: mc.Same) -> mc.Same:
        if not done:
            done.append(1)
            action()
        return (a + b) / 2

    class Plugin:
        @mc.hookimpl
        def mecha_merge_methods(self):
            return [meddle]

    plugins.register(Plugin(), "meddling")


def _rewrite_in_place(path: Path) -> None:
    """New values for every key, the same size, written into the same inode."""
    data = path.read_bytes()
    header_size = int.from_bytes(data[:8], "little")
    start = 8 + header_size
    new = torch.full(((len(data) - start) // 4,), 100.0).view(torch.uint8)
    with path.open("r+b") as handle:
        handle.seek(start)
        handle.write(bytes(new.tolist()))


@pytest.mark.parametrize("threads", ["1", "2"])
def test_an_input_rewritten_in_place_during_the_merge_is_refused(folder, capsys, plugins, threads):
    _rewriting_method(plugins, lambda: _rewrite_in_place(folder / "b.safetensors"))
    recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "meddle" &0 &1\n')
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet", "--threads", threads)
    assert status == 1
    assert error_line(err) == ("mecha: error: b.safetensors: the file changed while mecha was reading it (it was "
                               "rewritten, replaced or truncated); nothing was written: merge again once it is complete")
    assert not (folder / "out.safetensors").exists() and temp_files(folder) == []


def test_an_input_replaced_during_the_merge_is_refused(folder, capsys, plugins):
    def replace() -> None:
        save({f"k{i}": torch.zeros(64, 64) for i in range(4)}, folder / "new.safetensors")
        os.replace(folder / "new.safetensors", folder / "b.safetensors")

    _rewriting_method(plugins, replace)
    recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "meddle" &0 &1\n')
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet", "--threads", "1")
    assert status == 1 and "b.safetensors: the file changed while mecha was reading it" in error_line(err)
    assert not (folder / "out.safetensors").exists() and temp_files(folder) == []


TRUNCATING = textwrap.dedent("""
    import os, sys
    import mecha_core as mc
    from mecha_core.cli import main
    from mecha_core.plugins import get_plugins
    done = []

    @mc.merge_method
    def truncate(a: mc.Same, b: mc.Same) -> mc.Same:
        if not done:
            done.append(1)
            os.truncate("b.safetensors", 200)
        return a + b

    class Plugin:
        @mc.hookimpl
        def mecha_merge_methods(self):
            return [truncate]

    get_plugins().register(Plugin(), "truncating")
    sys.exit(main(["merge", "r.mecha", "-o", "out.safetensors", "--quiet", "--threads", sys.argv[1]]))
""")


@pytest.mark.parametrize("threads", ["1", "2"])
def test_an_input_truncated_during_the_merge_is_a_clean_error(folder, threads):
    """A truncated mapped file would raise SIGBUS and kill the process: run it in its own process."""
    (folder / "r.mecha").write_text('model "a.safetensors"\nmodel "b.safetensors"\nmerge "truncate" &0 &1\n')
    result = subprocess.run([sys.executable, "-c", TRUNCATING, threads], cwd=folder, env=_env(folder),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert error_line(result.stderr) == (
        "mecha: error: b.safetensors: the file changed while mecha was reading it (it was rewritten, replaced or "
        "truncated); nothing was written: merge again once it is complete")
    assert not (folder / "out.safetensors").exists() and temp_files(folder) == []


# 5 -------------------------------------------------------------------------------------------------
def _long_recipe(lines: int) -> str:
    body = ['model "a.safetensors"', 'model "b.safetensors"', 'merge "weighted_sum" &0 &1 alpha=0.5']
    body += [f'merge "weighted_sum" &{i} &1 alpha={0.5 + (i % 997) * 1e-6!r}' for i in range(2, lines)]
    return "version 1\n" + "\n".join(body) + "\n"


def _metadata(path: Path) -> dict[str, str]:
    with safetensors.safe_open(str(path), "pt") as f:  # the reference reader (it refuses headers over 100 MB)
        return f.metadata()


def test_the_stored_recipe_is_bounded_at_the_real_limit():
    """A recipe whose text passes the bound is stored compressed, within it, and reads back exactly."""
    text = _long_recipe(250_000)
    assert len(json.dumps(text)) > merge_module.STORED_RECIPE_BYTES
    stored = merge_module._stored_recipe(text)
    assert list(stored) == ["mecha_recipe_zlib"] and len(stored["mecha_recipe_zlib"]) <= merge_module.STORED_RECIPE_BYTES
    assert merge_module.stored_recipe(stored) == text


@pytest.mark.parametrize("limit, key", [(1 << 20, "mecha_recipe"), (400, "mecha_recipe_zlib"),
                                        (100, "mecha_recipe_omitted")])
def test_whatever_mecha_writes_mecha_and_safetensors_read_back(folder, monkeypatch, limit, key):
    monkeypatch.setattr(merge_module, "STORED_RECIPE_BYTES", limit)
    text = _long_recipe(40)
    (folder / "long.mecha").write_text(text)
    mc.merge(folder / "long.mecha", folder / "out.safetensors", save_dtype="float32")
    metadata = _metadata(folder / "out.safetensors")
    assert key in metadata
    stored = merge_module.stored_recipe(metadata)
    if key == "mecha_recipe_omitted":
        assert stored == "the recipe (42 lines, %d characters) is too large to store in the output; keep its .mecha file" % len(text)
    else:
        assert stored == text
    with mc.open_tensor_file(folder / "out.safetensors") as f:
        assert merge_module.stored_recipe(f.metadata) == stored


def test_a_header_safetensors_could_not_read_is_never_written(folder, monkeypatch):
    monkeypatch.setattr(output_file, "READABLE_HEADER_BYTES", 1000)
    before = snapshot(folder)
    with pytest.raises(mc.MechaError, match="the header would be .* bytes, more than the 1000 that safetensors"):
        mc.save_tensors({"w": torch.ones(2)}, folder / "out.safetensors", {"note": "x" * 2000})
    assert snapshot(folder) == before


# 6 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["float first", "integer first"])
@pytest.mark.parametrize("other", [torch.int64, torch.uint8])
def test_a_key_float_in_one_input_and_integer_in_another_is_refused(folder, capsys, order, other):
    save({"k0": torch.ones(4), "steps": torch.ones(3)}, folder / "f.safetensors")
    save({"k0": torch.ones(4), "steps": torch.ones(3, dtype=other)}, folder / "i.safetensors")
    first, second = ("f", "i") if order == "float first" else ("i", "f")
    recipe_file(folder, f'model "{first}.safetensors"\nmodel "{second}.safetensors"\nmerge "weighted_sum" &0 &1\n')
    before = snapshot(folder)
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 1
    kinds = {"f": "f.safetensors float32", "i": f"i.safetensors {str(other).removeprefix('torch.')}"}
    assert error_line(err) == (f"mecha: error: key 'steps' is a float tensor in some inputs and an integer or bool "
                               f"tensor in others: {kinds[first]}, {kinds[second]}; the inputs do not hold the same "
                               f"kind of value there")
    assert snapshot(folder) == before


def test_where_standard_output_is_the_output_a_dead_reader_is_not_success(folder):
    """``mecha compose r.mecha | head -c0``: the composed recipe went nowhere, so the status is not 0."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "mecha_core", "compose", "r.mecha"], cwd=folder,
                                env=_env(folder), stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert result.returncode == 141 and result.stderr == ""
