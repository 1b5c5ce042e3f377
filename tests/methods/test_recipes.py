"""Per-model hyperparameters in Python and .mecha, block dicts per model, sd-mecha 0.0.x recipe text."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.testing import write_model

BASE = {"layers.0.weight": torch.zeros(2), "head.weight": torch.zeros(2)}
ONE = {"layers.0.weight": torch.tensor([1.0, 2.0]), "head.weight": torch.tensor([1.0, 2.0])}
TWO = {"layers.0.weight": torch.tensor([3.0, 4.0]), "head.weight": torch.tensor([3.0, 4.0])}


def test_per_model_weights_in_a_mecha_file(methods, tmp_path):
    for name, model in (("base", BASE), ("one", ONE), ("two", TWO)):
        write_model(model, tmp_path / f"{name}.safetensors")
    text = ('version 1\nmodel "base"\nmodel "one"\nmodel "two"\n'
            'merge "task_arithmetic" &0 &1 &2 weight=[1.0, 0.5] lambda_=2.0\n')
    recipe = mc.deserialize(text)
    assert recipe == mc.task_arithmetic("base", "one", "two", weight=[1.0, 0.5], lambda_=2.0)
    out = mc.merge(recipe, models_dir=tmp_path, save_dtype="fp32")
    assert out["head.weight"].tolist() == [2 * (1 + 1.5), 2 * (2 + 2)]
    assert "weight=[1.0, 0.5]" in mc.serialize(recipe)


def test_per_model_block_dicts(methods):
    only_head = {"generic_model_block_layers_0": 0.0, "generic_model_default": 1.0}
    out = mc.merge(mc.task_arithmetic(BASE, ONE, TWO, weight=[only_head, 1.0]), save_dtype="fp32")
    assert out["layers.0.weight"].tolist() == [3.0, 4.0]  # ONE weighs 0 in block layers_0
    assert out["head.weight"].tolist() == [4.0, 6.0]


def test_per_model_values_must_match_the_models(methods):
    with pytest.raises(mc.RecipeError, match="expected 2 values \\(one per model\\), got 3"):
        mc.ties_merge(BASE, ONE, TWO, density=[0.5, 0.5, 0.5])


def test_sd_mecha_0_0_flags_keep_their_meaning(methods, tmp_path):
    for name, model in (("base", BASE), ("one", ONE), ("two", TWO)):
        write_model(model, tmp_path / f"{name}.safetensors")
    text = ('model "base"\nmodel "one"\nmodel "two"\nmerge "subtract" &1 &0\nmerge "subtract" &2 &0\n'
            'merge "ties_sum_with_dropout" &3 &4 probability=0.0 no_rescale=1.0 k=1.0 vote_sgn=1.0 seed=3\n'
            'merge "add_difference" &0 &5 alpha=1.0\n')
    out = mc.merge(mc.deserialize(text), models_dir=tmp_path, save_dtype="fp32")
    assert out["head.weight"].tolist() == [2.0, 3.0]  # all agree: the mean, not rescaled
