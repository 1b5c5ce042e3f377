"""Item 15 of issue 19: the recipe stored in an output names models by file name, not by the
folders of the machine that made it, unless asked (--store-model-paths, store_model_paths=True)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import safetensors
import torch

import mecha_core as mc

from .conftest import run, save

merge_module = importlib.import_module("mecha_core.merge")


@pytest.fixture
def folder(plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for sub, value in (("alice/sd", 1.0), ("alice/lora", 3.0), ("bob/sd", 5.0)):
        (tmp_path / sub).mkdir(parents=True)
        save({"w": torch.full((4,), value)}, tmp_path / sub / "model.safetensors")
    save({"w": torch.full((4,), 7.0)}, tmp_path / "alice/sd/dreamshaper_8.safetensors")
    return tmp_path


def _stored(path: Path) -> str:
    with safetensors.safe_open(str(path), "pt") as f:
        return merge_module.stored_recipe(f.metadata())


def test_the_stored_recipe_names_models_without_their_folders(folder, capsys):
    recipe = (f'model "{folder}/alice/sd/dreamshaper_8.safetensors"\nmodel "{folder}/alice/sd/model.safetensors"\n'
              f'merge "weighted_sum" &0 &1\n')
    (folder / "r.mecha").write_text(recipe)
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 0, err
    assert _stored(folder / "out.safetensors") == ('version 1\nmodel "dreamshaper_8.safetensors"\nmodel '
                                                   '"model.safetensors"\nmerge "weighted_sum" &0 &1 alpha=0.5\n')
    assert str(folder) not in (folder / "out.safetensors").read_bytes().decode("utf-8", "replace")
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "full.safetensors", "--quiet", "--store-model-paths")
    assert status == 0, err
    assert _stored(folder / "full.safetensors") == mc.serialize(mc.deserialize(recipe))


def test_models_sharing_a_file_name_keep_the_folders_that_tell_them_apart(folder):
    a, b, c = (str(folder / p / "model.safetensors") for p in ("alice/sd", "alice/lora", "bob/sd"))
    recipe = mc.n_average(mc.model(a), mc.model(b), mc.model(c))
    mc.merge(recipe, folder / "out.safetensors", save_dtype="float32")
    stored = mc.deserialize(_stored(folder / "out.safetensors"))
    assert [m.source for m in stored.models()] == ["alice/sd/model.safetensors", "lora/model.safetensors",
                                                   "bob/sd/model.safetensors"]
    mc.merge(recipe, folder / "full.safetensors", save_dtype="float32", store_model_paths=True)
    assert [m.source for m in mc.deserialize(_stored(folder / "full.safetensors")).models()] == [a, b, c]
