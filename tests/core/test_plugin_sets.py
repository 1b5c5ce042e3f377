"""Two plugin sets side by side: whatever looks a name up (reading a recipe, a model's merge space,
the block/class helpers, planning, merging) takes the plugin set to use; the global one is the
default and is not consulted when a set is given."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.merge import make_options
from mecha_core.model_type import FileKeySource
from mecha_core.planning import plan_merge
from mecha_core.plugins import load_plugins
from mecha_core.testing import as_plugin

from .conftest import toy_keys

RECIPE = 'model "x" type="kind"\nmodel "y"\nmerge "blend" &0 &1\n'


def plugin_set(scale: float, space: mc.MergeSpace, blocks: tuple[str, ...]) -> mc.Plugins:
    @mc.merge_method(name="blend")
    def blend(a: mc.Same, b: mc.Weight) -> mc.Same:
        return a + scale * b

    kind = mc.ModelType("kind", space, open=FileKeySource)
    arch = mc.Architecture("toy", (mc.Component("body", blocks), mc.Component("head", ("h",))), toy_keys)
    plugins = load_plugins(entry_points=[], strict=True)
    plugins.register(as_plugin(blend, kind, arch), "set")
    return plugins


@pytest.fixture
def sets(mecha_plugins):
    """Two sets that give the same names different meanings; the global set has neither."""
    return plugin_set(1.0, mc.MergeSpace.WEIGHT, ("b0", "b1")), plugin_set(-1.0, mc.MergeSpace.DELTA, ("b0", "b1", "b2"))


def test_a_recipe_is_read_with_the_set_given(sets):
    first, second = sets
    one, two = mc.deserialize(RECIPE, plugins=first), mc.deserialize(RECIPE, plugins=second)
    assert one.method is first.merge_methods.get("blend") and two.method is second.merge_methods.get("blend")
    assert one.space is mc.MergeSpace.WEIGHT and two.space is mc.MergeSpace.DELTA  # Same follows x's type
    with pytest.raises(mc.RecipeSyntaxError, match="unknown merge method 'blend'"):
        mc.deserialize(RECIPE)  # the global set, in use by default, has no such method


def test_a_model_space_is_looked_up_in_the_set_given(sets):
    first, second = sets
    node = mc.model("x", type="kind")
    assert node.space_in(first) is mc.MergeSpace.WEIGHT and node.space_in(second) is mc.MergeSpace.DELTA
    with pytest.raises(mc.PluginError, match="unknown model type 'kind'"):
        node.space  # noqa: B018 - the global set


def test_block_and_class_helpers_take_the_set(sets):
    first, second = sets
    assert mc.blocks("toy", "body", 0.1, 0.2, plugins=first) == {"toy_body_block_b0": 0.1, "toy_body_block_b1": 0.2}
    with pytest.raises(mc.RecipeError, match="toy body has 3 blocks"):
        mc.blocks("toy", "body", 0.1, 0.2, plugins=second)
    assert mc.classes("toy", "body", linear=0.5, plugins=first) == {"toy_body_class_linear": 0.5}
    assert mc.default("toy", plugins=second) == {"toy_body_default": 0, "toy_head_default": 0}
    with pytest.raises(mc.PluginError, match="unknown architecture 'toy'"):
        mc.default("toy")


def test_two_sets_plan_and_merge_the_same_text_each_its_way(sets, tmp_path):
    mc.testing.write_model({"layers.0.weight": torch.full((4, 4), 3.0)}, tmp_path / "x.safetensors")
    mc.testing.write_model({"layers.0.weight": torch.full((4, 4), 2.0)}, tmp_path / "y.safetensors")
    text = RECIPE.replace(' type="kind"', "")
    for plugins, expected in zip(sets, (3.0 + 2.0, 3.0 - 2.0)):  # blend is a + b in one set, a - b in the other
        plan = plan_merge(mc.deserialize(text, plugins=plugins), make_options(models_dir=tmp_path), plugins)
        plan.close()
        assert plan.root.method is plugins.merge_methods.get("blend")
        out = mc.merge(text, models_dir=tmp_path, save_dtype="fp32", plugins=plugins)
        assert out["layers.0.weight"].unique().tolist() == [expected]
