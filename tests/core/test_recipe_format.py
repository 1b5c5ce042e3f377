"""The .mecha format: the sd-mecha 0.0.x grammar, its extensions, round trips and parse errors."""

from __future__ import annotations

import pytest

import mecha_core as mc
from mecha_core.recipe import MergeNode, ModelNode, ParameterNode

SD_MECHA_RECIPE = """\
model "ghostmix_v20Bakedvae" "sd1" "base"
model "deliberate_v2" "sd1" "base"
merge "weighted_sum" &0 &1 alpha=0.5
model "dreamshaper_332BakedVaeClipFix" "sd1" "base"
dict sd1_txt_default=0.33 sd1_txt_block_in2=0.75
merge "weighted_sum" &2 &3 alpha=&4
"""


def test_reads_the_sd_mecha_0_0_x_grammar(plugins):
    recipe = mc.deserialize(SD_MECHA_RECIPE)
    assert isinstance(recipe, MergeNode)
    assert recipe.method.name == "weighted_sum"
    inner, dreamshaper = recipe.inputs
    assert isinstance(dreamshaper, ModelNode)
    assert (dreamshaper.source, dreamshaper.arch, dreamshaper.type) == ("dreamshaper_332BakedVaeClipFix", "sd1", "base")
    assert recipe.hypers["alpha"] == {"sd1_txt_default": 0.33, "sd1_txt_block_in2": 0.75}
    assert inner.method.name == "weighted_sum" and inner.hypers["alpha"] == 0.5
    assert [m.source for m in inner.inputs] == ["ghostmix_v20Bakedvae", "deliberate_v2"]


def test_reads_parameters_with_sd_mecha_space_names(plugins):
    recipe = mc.deserialize('parameter "a" "BASE"\nparameter "b" "DELTA"\nmerge "add_difference" &0 &1 alpha=1.0\n')
    assert recipe.parameters() == {"a": ParameterNode("a", "weight"), "b": ParameterNode("b", "delta")}
    assert recipe.space == mc.MergeSpace.WEIGHT


def test_the_python_api_and_the_text_build_equal_recipes(plugins):
    text = 'model "a.safetensors"\nmodel "b.safetensors" arch="toy"\nmerge "weighted_sum" &0 &1 alpha=0.25\n'
    built = mc.weighted_sum("a.safetensors", mc.model("b.safetensors", arch="toy"), alpha=0.25)
    assert mc.deserialize(text) == built


def test_extensions_comments_blank_lines_escapes_booleans_lists_and_options(plugins):
    text = '''version 1
# a comment line, then a blank one

model "a \\"quoted\\" name.safetensors"   # trailing comment
model "b.safetensors" type="base"
merge "weighted_sum" &0 &1 alpha=-1e-3 device="cpu" dtype="float64"
'''
    recipe = mc.deserialize(text)
    assert recipe.inputs[0].source == 'a "quoted" name.safetensors'
    assert recipe.inputs[1].type == "base"
    assert recipe.hypers["alpha"] == -0.001
    assert (recipe.device, recipe.dtype) == ("cpu", "float64")


def test_references_count_instructions_not_lines(plugins):
    text = 'version 1\n\n# note\nmodel "a"\n\nmodel "b"\nmerge "subtract" &0 &1\n'
    recipe = mc.deserialize(text)
    assert [m.source for m in recipe.inputs] == ["a", "b"]


def test_round_trip_is_stable_and_shares_nodes(plugins):
    a = mc.model("a.safetensors")
    diff = mc.subtract(a, mc.model("base.safetensors", arch="toy", type="base"))
    recipe = mc.add_difference(mc.weighted_sum(a, mc.parameter("p"), alpha=mc.blocks("toy", "body", b0=0.5)),
                               diff, alpha=0.7)
    text = mc.serialize(recipe)
    assert mc.deserialize(text) == recipe
    assert mc.serialize(mc.deserialize(text)) == text
    assert text.splitlines()[0] == "version 1"
    assert sum(1 for line in text.splitlines() if line.startswith('model "a.safetensors"')) == 1


def test_serialize_writes_the_expected_lines(plugins):
    recipe = mc.weighted_sum("a.safetensors", "b.safetensors", alpha=0.5)
    assert mc.serialize(recipe) == ('version 1\nmodel "a.safetensors"\nmodel "b.safetensors"\n'
                                    'merge "weighted_sum" &0 &1 alpha=0.5\n')


def test_per_model_lists(plugins):
    @mc.merge_method
    def weighted(*models: mc.Same, weight: tuple[float, ...] = ()) -> mc.Same:
        return sum(w * m for w, m in zip(weight, models))

    plugins.register(type("P", (), {"mecha_merge_methods": mc.hookimpl(lambda self: [weighted])})(), "lists")
    text = 'model "a"\nmodel "b"\ndict toy_body_default=2\nmerge "weighted" &0 &1 weight=[0.25, &2]\n'
    recipe = mc.deserialize(text)
    assert recipe.hypers["weight"] == (0.25, {"toy_body_default": 2})
    assert mc.deserialize(mc.serialize(recipe)) == recipe


def test_a_path_to_a_mecha_file_is_read(plugins, tmp_path):
    path = tmp_path / "r.mecha"
    path.write_text('model "a"\nmodel "b"\nmerge "n_average" &0 &1\n')
    assert mc.deserialize(path) == mc.n_average("a", "b")
    assert mc.deserialize(str(path)) == mc.n_average("a", "b")


@pytest.mark.parametrize("text, line, fragment", [
    ('model "a"\nmodel "b"\nmerge "weigted_sum" &0 &1\n', 3, "did you mean 'weighted_sum'"),
    ('model "a"\nmodel "b"\nmerge "weighted_sum" &0 &1 alpah=0.5\n', 3, "did you mean 'alpha'"),
    ('model "a"\nmerge "weighted_sum" &0\n', 2, "takes 2 models, got 1"),
    ('model "a"\nmerge "weighted_sum" &0 &3\n', 2, "reference &3 points to a later or missing instruction"),
    ('model "a\n', 1, "unterminated string"),
    ('modle "a"\n', 1, "did you mean 'model'"),
    ('model "a"\n%%% garbage\n', 2, "unexpected text '%%%'"),
    ('model "a"\ndict x=1\n', 2, "the last instruction must be"),
    ('model "a"\nmodel "b"\nmerge "subtract" &0 &1\nmerge "subtract" &2 &0\n', 4, "must be in weight space"),
])
def test_parse_errors_name_the_line_and_show_it(plugins, text, line, fragment):
    with pytest.raises(mc.RecipeSyntaxError) as caught:
        mc.deserialize(text, source="r.mecha")
    message = str(caught.value)
    assert message.startswith(f"r.mecha line {line}: ")
    assert fragment in message
    assert "(in: " in message


def test_empty_recipe(plugins):
    with pytest.raises(mc.RecipeSyntaxError, match="empty"):
        mc.deserialize("# only a comment\n\n")


def test_in_memory_models_cannot_be_serialized(plugins):
    with pytest.raises(mc.RecipeError, match="in-memory"):
        mc.serialize(mc.n_average({"x": None}, "b"))
