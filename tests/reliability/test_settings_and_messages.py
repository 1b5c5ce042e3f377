"""Items 12 and 14 of issue 19: every config setting is optional, the config must be a regular
file, and the small messages say what is wrong: a --drop that matches nothing, a recipe with a
byte-order mark, a folder given as a recipe, dtype errors naming the config file correctly."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import safetensors
import torch

import mecha_core as mc

from .conftest import error_line, recipe_file, run, save, snapshot


@pytest.fixture
def folder(plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    save({"model.w": torch.full((4, 4), 1.0), "model.b": torch.zeros(2)}, models / "a.safetensors")
    save({"model.w": torch.full((4, 4), 3.0), "model.b": torch.ones(2)}, models / "b.safetensors")
    recipe_file(tmp_path, 'model "a"\nmodel "b"\nmerge "weighted_sum" &0 &1 alpha=0.5\n')
    return tmp_path


def _use_config(monkeypatch, folder: Path, text: str | None) -> Path:
    path = folder / "config.toml"
    if text is not None:
        path.write_text(text)
    monkeypatch.setenv("MECHA_CONFIG", str(path))
    return path


# 12 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["threads = 2\n", "", "# nothing but a comment\n", 'save_dtype = "fp32"\n'])
def test_every_config_setting_is_optional(folder, capsys, monkeypatch, text):
    _use_config(monkeypatch, folder, text)
    status, _, err = run(capsys, "merge", "r.mecha", "--models-dir", "models", "-o", "out.safetensors", "--quiet")
    assert status == 0, err
    with safetensors.safe_open(str(folder / "out.safetensors"), "pt") as f:
        assert f.get_tensor("model.w").float().unique().tolist() == [2.0]


# 14 ------------------------------------------------------------------------------------------------
def test_a_drop_that_matches_nothing_is_an_error_with_the_nearest_names(folder, capsys):
    before = snapshot(folder)
    status, _, err = run(capsys, "merge", "r.mecha", "--models-dir", "models", "-o", "out.safetensors", "--quiet",
                         "--drop", "model.ww")
    assert status == 1
    assert error_line(err) == ("mecha: error: --drop 'model.ww' matches no component and no key of the inputs; did "
                               "you mean 'model.w' or 'model.b' or 'model'?")
    assert snapshot(folder) == before
    status, _, err = run(capsys, "merge", "r.mecha", "--models-dir", "models", "-o", "out.safetensors", "--quiet",
                         "--drop", "model.b*")
    assert status == 0, err
    with safetensors.safe_open(str(folder / "out.safetensors"), "pt") as f:
        assert list(f.keys()) == ["model.w"]


def test_a_recipe_with_a_byte_order_mark_is_read(folder, capsys):
    (folder / "bom.mecha").write_bytes(b"\xef\xbb\xbf" + (folder / "r.mecha").read_bytes())
    status, _, err = run(capsys, "merge", "bom.mecha", "--models-dir", "models", "-o", "out.safetensors", "--quiet")
    assert status == 0, err
    assert mc.serialize(mc.deserialize(folder / "bom.mecha")) == mc.serialize(mc.deserialize(folder / "r.mecha"))


def test_a_folder_given_as_a_recipe_says_it_is_a_folder(folder, capsys):
    for command in (["merge", "models"], ["merge", "models/"], ["compose", "models"]):
        status, _, err = run(capsys, *command)
        assert status == 1 and error_line(err) == f"mecha: error: {command[1]}: is a folder, not a recipe file"
    with pytest.raises(mc.RecipeError, match="^models: is a folder, not a recipe file$"):
        mc.merge("models", "out.safetensors")


def test_a_bad_dtype_in_the_config_names_the_setting_and_the_file(folder, capsys, monkeypatch):
    path = _use_config(monkeypatch, folder, 'work_dtype = "fp12"\n')
    status, _, err = run(capsys, "merge", "r.mecha", "--models-dir", "models", "--quiet")
    assert status == 1
    line = error_line(err)
    assert line.startswith(f"mecha: error: config {path}: unknown work dtype 'fp12'; did you mean ")
    assert "tomls" not in line


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_the_config_must_be_a_regular_file(folder, capsys, monkeypatch, kind):
    if kind == "fifo":
        path = folder / "config.fifo"
        os.mkfifo(path)
    elif kind == "device":
        path = Path(os.devnull)
    else:
        path = folder / "models"
    monkeypatch.setenv("MECHA_CONFIG", str(path))
    result: list[tuple[int, str, str]] = []
    worker = threading.Thread(target=lambda: result.append(run(capsys, "merge", "r.mecha", "--quiet")), daemon=True)
    worker.start()
    worker.join(timeout=60)  # a FIFO read would wait for a writer forever
    assert result, "mecha blocked on the config"
    status, _, err = result[0]
    what = "is a folder;" if kind == "folder" else "is not a regular file (a pipe or a device?);"
    assert status == 1
    assert error_line(err) == f"mecha: error: config {path}: {what} MECHA_CONFIG must name a config file"
