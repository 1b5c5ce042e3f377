"""sd-mecha 1.x recipes (``version 0.1.0``, as its outputs store them) read where their methods map to
mecha's, with 1.x's defaults; the rest refused by name on its line."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc

from .conftest import assert_same_tensors, metadata

V1 = '''version 0.1.0
model "ghost" model_config="sd1-ldm" merge_space="weight"
model "dream" model_config="sd1-ldm" merge_space="weight"
merge "weighted_sum" &0 &1 0.3
model "Lora/detail.safetensors" model_config="sd1-kohya" merge_space="delta"
merge "convert_'sd1-kohya'_to_'sd1-ldm'" &3
merge "add_difference" &2 &4 alpha=0.5
'''


def test_a_1_x_recipe_becomes_the_mecha_recipe_of_the_same_merge(plugins):
    ghost, dream = mc.model("ghost", "sd1"), mc.model("dream", "sd1")
    lora = mc.model("Lora/detail.safetensors", "sd1", "lora")
    expected = mc.add_difference(mc.weighted_sum(ghost, dream, alpha=0.3), lora, alpha=0.5)
    assert mc.deserialize(V1) == expected


def test_a_1_x_recipe_merges_like_the_mecha_recipe(models):
    dirs = [models / "Stable-diffusion", models]
    translated = mc.merge(mc.deserialize(V1), models_dir=dirs, save_dtype="fp32")
    by_hand = mc.merge(mc.add_difference(mc.weighted_sum("ghost", "dream", alpha=0.3),
                                         mc.model("Lora/detail.safetensors", type="lora"), alpha=0.5),
                       models_dir=dirs, save_dtype="fp32")
    assert_same_tensors(translated, by_hand, 0)


def test_1_x_defaults_are_kept_where_mecha_s_differ(plugins):
    """1.x's ties_sum has k=1.0 (mecha's: 0.2) and a boolean vote_sgn; rotate's extra solver settings pass
    at their 1.x defaults."""
    text = ('version 0.1.0\nmodel "a" model_config=null merge_space="delta"\nmodel "b" model_config=null '
            'merge_space="delta"\nmerge "ties_sum" &0 &1 vote_sgn=true\n')
    with pytest.raises(mc.RecipeSyntaxError, match="no mecha counterpart; expected merge_space='weight'"):
        mc.deserialize(text)
    text = ('version 0.1.0\nmodel "a" model_config="sd1-ldm" merge_space="weight"\nmodel "b" model_config="sd1-ldm" '
            'merge_space="weight"\nmerge "subtract" &0 &1\nmerge "subtract" &1 &0\n'
            'merge "ties_sum" &2 &3 vote_sgn=true\nmerge "rotate" &0 &1 1.0 0.25 centralization=1.0\n')
    ties = mc.deserialize(text.rsplit("\n", 2)[0] + "\n")
    assert ties.hypers == {"k": 1.0, "vote_sgn": 1.0}
    rotate = mc.deserialize(text)
    assert rotate.hypers == {"alignment": 1.0, "alpha": 0.25}


@pytest.mark.parametrize("line, named", [
    ('merge "ties_sum_with_dropout" &0 &1', "'ties_sum_with_dropout' has no mecha counterpart"),
    ('merge "rotate" &0 &1 centralization=0.5', "centralization=0.5 has no mecha counterpart"),
    ('merge "weighted_sum" &0 &1 gamma=0.5', "no hyperparameter 'gamma'"),
    ('literal &2 model_config="sd1-supermerger_blocks" merge_space="param"', "'literal' instructions"),
    ('merge "convert_\'sd1-supermerger_blocks\'_to_\'sd1-ldm\'" &0', "conversion 'sd1-supermerger_blocks'"),
    ('model "f" model_config="flux-flux" merge_space="weight"', "model config 'flux-flux'"),
])
def test_what_does_not_map_is_refused_by_name_on_its_line(plugins, line, named):
    text = ('version 0.1.0\nmodel "a" model_config="sd1-ldm" merge_space="weight"\nmodel "b" '
            'model_config="sd1-ldm" merge_space="weight"\ndict x=1\n' + line + "\n")
    with pytest.raises(mc.RecipeSyntaxError, match="line 5") as caught:
        mc.deserialize(text)
    assert named in str(caught.value)


def test_other_versions_are_still_refused(plugins):
    with pytest.raises(mc.RecipeSyntaxError, match="version 0.2.0 is not supported"):
        mc.deserialize('version 0.2.0\nmodel "a"\n')


def test_the_recipe_of_a_1_x_output_inspects_and_merges_from_the_cli(models, mecha_cli, tmp_path):
    """A file sd-mecha 1.x wrote keeps its recipe in ``mecha_recipe``: inspect shows it, merge runs it."""
    from mecha_core.testing import write_model
    made_by_1x = write_model({"w": torch.zeros(2)}, tmp_path / "made_by_1x.safetensors", {"mecha_recipe": V1})
    shown = mecha_cli("inspect", made_by_1x)
    assert shown.status == 0 and 'merge "weighted_sum" &0 &1 0.3' in shown.out
    recipe = tmp_path / "from_1x.mecha"
    recipe.write_text(metadata(made_by_1x)["mecha_recipe"])
    out = tmp_path / "out.safetensors"
    result = mecha_cli("merge", recipe, "-o", out, "--models-dir", models / "Stable-diffusion", "--models-dir",
                       models, "--quiet")
    assert result.status == 0, result.err
    assert "version 1\n" in metadata(out)["mecha_recipe"]
