"""Item 1 of issue 19: no command writes over one of its inputs, known by file identity (device and
inode), whatever name reaches it: the recipe, a template, a sub-recipe, a model given to compose,
the fallback, a model a plugin holds open while it saves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import mecha_core as mc
from mecha_core.output_file import OutputFile, save_tensors, write_text_atomically
from mecha_core import open_tensor_file

from .conftest import error_line, recipe_file, run, save, snapshot, temp_files


@pytest.fixture
def folder(plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    save({"w": torch.full((4, 4), 1.0)}, tmp_path / "a.safetensors")
    save({"w": torch.full((4, 4), 3.0)}, tmp_path / "m.safetensors")
    recipe_file(tmp_path, 'model "a.safetensors"\nmodel "m.safetensors"\nmerge "weighted_sum" &0 &1 alpha=0.5\n')
    recipe_file(tmp_path, 'parameter "x"\nmodel "a.safetensors"\nmerge "weighted_sum" &0 &1\n', "t.mecha")
    recipe_file(tmp_path, 'model "m.safetensors"\nmodel "a.safetensors"\nmerge "weighted_sum" &0 &1\n', "sub.mecha")
    os.link(tmp_path / "r.mecha", tmp_path / "r-link.mecha")
    os.link(tmp_path / "m.safetensors", tmp_path / "m-link.safetensors")
    os.symlink(tmp_path / "t.mecha", tmp_path / "t-symlink.mecha")
    return tmp_path


@pytest.mark.parametrize("args, source", [
    (["merge", "r.mecha", "--quiet", "-o", "r.mecha"], "r.mecha"),
    (["merge", "r.mecha", "--quiet", "-o", "r-link.mecha"], "r.mecha"),
    (["merge", "r.mecha", "--quiet", "-o", "m-link.safetensors"], "m.safetensors"),
    (["compose", "t.mecha", "-p", "x", "m.safetensors", "-o", "m.safetensors"], "m.safetensors"),
    (["compose", "t.mecha", "-p", "x", "m.safetensors", "-o", "m-link.safetensors"], "m.safetensors"),
    (["compose", "t.mecha", "-p", "x", "m.safetensors", "-o", "t.mecha"], "t.mecha"),
    (["compose", "t.mecha", "-p", "x", "m.safetensors", "-o", "t-symlink.mecha"], "t.mecha"),
    (["compose", "t.mecha", "-p", "x", "sub.mecha", "-o", "sub.mecha"], "sub.mecha"),
    (["compose", "t.mecha", "-p", "x", "sub.mecha", "-o", "a.safetensors"], "a.safetensors"),  # a model of the template
])
def test_no_command_writes_over_an_input(folder, capsys, args, source):
    before = snapshot(folder)
    status, _, err = run(capsys, *args)
    assert status == 1, err
    line = error_line(err)
    assert line.startswith(f"mecha: error: refusing to write the output over the input '{source}'"), line
    assert snapshot(folder) == before


def test_a_model_found_in_the_models_folder_is_an_input(folder, capsys):
    models = folder / "models"
    models.mkdir()
    save({"w": torch.ones(4, 4)}, models / "named.safetensors")
    recipe_file(folder, 'model "named"\nmodel "a.safetensors"\nmerge "weighted_sum" &0 &1\n', "n.mecha")
    before = snapshot(folder)
    status, _, err = run(capsys, "merge", "n.mecha", "--quiet", "--models-dir", models, "-o", models / "named.safetensors")
    assert status == 1 and "over the input" in error_line(err)
    assert snapshot(folder) == before


def test_the_python_api_refuses_its_recipe_file_too(folder):
    before = snapshot(folder)
    with pytest.raises(mc.MechaError, match="over the input"):
        mc.merge(folder / "r.mecha", folder / "r-link.mecha")
    assert snapshot(folder) == before


def test_every_writer_refuses_a_model_held_open_for_reading(folder):
    """A plugin's save path (OutputFile, save_tensors, write_text_atomically) cannot replace a model
    mecha is reading, even when nobody told it that file is an input."""
    before = snapshot(folder)
    with open_tensor_file(folder / "m.safetensors"):
        with pytest.raises(mc.MechaError, match="over the input"):
            save_tensors({"w": torch.ones(1)}, folder / "m-link.safetensors")
        with pytest.raises(mc.MechaError, match="over the input"):
            OutputFile(folder / "m.safetensors", [("w", "float32", (1,))], {})
        with pytest.raises(mc.MechaError, match="over the input"):
            write_text_atomically(folder / "m.safetensors", "text")
    assert snapshot(folder) == before
    save_tensors({"w": torch.ones(1)}, folder / "m.safetensors")  # closed: no longer an input
    assert temp_files(folder) == []
