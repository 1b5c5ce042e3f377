"""0.0.x recipe files read unchanged: the shapes its serializer wrote and its examples hold."""

from __future__ import annotations

import logging

import pytest
import torch

import mecha_compat
import mecha_core as mc

from .conftest import assert_same_tensors

# the shapes of 0.0.25's examples/recipes: a parameter with an architecture, BASE spaces, "sd1" "base"
# models, a dict of component defaults, a hyperparameter the method does not have (rotate's beta)
FUSION = '''parameter "a" "BASE" "sd1"
parameter "c" "BASE"
merge "subtract" &0 &1
parameter "b" "BASE"
merge "subtract" &3 &1
merge "perpendicular_component" &2 &4
merge "add_difference" &0 &5 alpha=1.0
merge "rotate" &6 &0 alpha=1.0 beta=0.0'''
SPLIT = '''model "ghost" "sd1" "base"
model "pure" "sd1" "base"
merge "subtract" &0 &1
model "dream" "sd1" "base"
merge "subtract" &3 &1
merge "perpendicular_component" &2 &4
merge "add_difference" &0 &5 alpha=1.0
merge "weighted_sum" &0 &3 alpha=0.5
dict sd1_txt_default=0 sd1_unet_default=1
merge "weighted_sum" &6 &7 alpha=&8'''


def test_a_0_0_x_template_with_parameter_architectures_reads_and_composes(plugins, caplog):
    with caplog.at_level(logging.WARNING, logger="mecha"):
        recipe = mc.deserialize(FUSION)
    assert "rotate has no hyperparameter 'beta'; ignored" in caplog.text
    assert set(recipe.parameters()) == {"a", "b", "c"}
    assert all(p.space is mc.MergeSpace.WEIGHT for p in recipe.parameters().values())
    filled = mc.compose(recipe, a="ghost", b="dream", c="pure")
    assert filled.method.name == "rotate" and filled.hypers["alpha"] == 1.0


def test_deserialize_takes_lines_a_path_or_text(plugins, tmp_path):
    path = tmp_path / "split.mecha"
    path.write_text(SPLIT)
    with open(path) as f:
        from_lines = mc.deserialize(f.readlines())
    assert from_lines == mc.deserialize(path) == mc.deserialize(str(path)) == mc.deserialize(SPLIT)
    with pytest.raises(mc.RecipeError, match="list of lines"):
        mc.deserialize([1, 2])


def test_the_split_recipe_merges_as_0_0_25_merges_it(models, sd_mecha):
    def run(sd, recipe):
        out = {}
        sd.RecipeMerger(models_dir=models / "Stable-diffusion", default_dtype=torch.float64).merge_and_save(
            recipe, output=out, save_dtype=torch.float32)
        return out

    ours = run(mecha_compat, mc.deserialize(SPLIT))
    theirs = run(sd_mecha, sd_mecha.deserialize(SPLIT.split("\n")))
    assert_same_tensors(ours, theirs, 1e-6)


def test_what_0_0_25_serializes_reads_here(plugins, sd_mecha):
    """0.0.25 writes each model with its arch and type and every hyperparameter of each call. (Its writer of
    parameter lines fails on this Python; FUSION above holds the shape it wrote, from its own examples.)"""
    recipe = sd_mecha.rotate(sd_mecha.add_perpendicular("a", "b", "c"), sd_mecha.model("d", "sd1"), alpha=0.5)
    text = sd_mecha.serialize(recipe)
    assert 'model "d" "sd1" "base"' in text and "alignment=1.0" in text
    ours = mc.deserialize(text)
    assert ours.method.name == "rotate" and ours.hypers == {"alignment": 1.0, "alpha": 0.5}
    assert ours.inputs[1] == mc.model("d", "sd1", "base")


def test_merge_space_base_is_weight_space():
    assert mc.MergeSpace.BASE is mc.MergeSpace.WEIGHT
    assert mc.parameter("p", mc.MergeSpace.BASE).space is mc.MergeSpace.WEIGHT
    assert mecha_compat.parameter("p", mecha_compat.MergeSpace.DELTA).space is mc.MergeSpace.DELTA


def test_near_miss_names_stay_errors_in_0_0_x_recipes(plugins):
    with pytest.raises(mc.RecipeSyntaxError, match="did you mean 'alpha'"):
        mc.deserialize('model "a"\nmodel "b"\nmerge "weighted_sum" &0 &1 alpah=0.5')
    with pytest.raises(mc.RecipeSyntaxError, match="unknown hyperparameter 'beta'"):
        mc.deserialize('version 1\nmodel "a"\nmodel "b"\nmerge "rotate" &0 &1 beta=0.5')
