"""@merge_method declarations, build-time checks, and block/class hyperparameters."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.spaces import SAME, MergeSpace

from .conftest import TOY_KEYS, toy_model


def test_the_signature_declares_inputs_hypers_spaces_and_context():
    @mc.merge_method(elementwise=True)
    def method(a: mc.Weight, *rest: mc.Delta, alpha: float = 0.5, seed: int = 3, key: str = "",
               generator=None, weights: tuple[float, ...] = ()) -> mc.Delta:
        """First line.

        More text."""
        return a

    assert [(i.name, i.space, i.variadic) for i in method.inputs] == [
        ("a", MergeSpace.WEIGHT, False), ("rest", MergeSpace.DELTA, True)]
    assert [(h.name, h.kind, h.default, h.per_model) for h in method.hypers] == [
        ("alpha", float, 0.5, False), ("seed", int, 3, False), ("weights", float, (), True)]
    assert method.context == {"key", "generator"} and method.returns == MergeSpace.DELTA
    assert method.elementwise and method.summary == "First line."
    assert method.signature() == ("method(a: Weight, *rest: Delta, alpha: float = 0.5, seed: int = 3, "
                                  "weights: tuple[float, ...] = ()) -> Delta")


def test_unannotated_inputs_are_same_and_returns_same():
    @mc.merge_method
    def plain(a, b):
        return a

    assert [i.space for i in plain.inputs] == [SAME, SAME] and plain.returns is SAME


@pytest.mark.parametrize("source, message", [
    ("def f(a, b=None): return a", "has a default"),
    ("def f(a, *, alpha): return a", "needs a default"),
    ("def f(*, alpha=1.0): return 1", "at least one input"),
    ("def f(a: Weight) : return a", "annotate the return value"),
    ("def f(a: Weight) -> Same: return a", "no input is annotated Same"),
    ("def f(a, *, alpha: list = 1): return a", "unsupported type"),
])
def test_bad_declarations_are_refused_with_the_reason(source, message):
    namespace = {"Weight": mc.Weight, "Same": mc.Same}
    exec(source, namespace)
    with pytest.raises(TypeError, match=message):
        mc.merge_method(namespace["f"])


def test_coefficients_need_an_elementwise_method():
    with pytest.raises(TypeError, match="coefficients make it a linear combination.*add elementwise=True"):
        mc.merge_method(lambda a, b: a + b, name="plus", coefficients=lambda count: (1.0, 1.0))


def test_invalid_names_are_refused():
    with pytest.raises(ValueError, match="invalid merge method name 'Bad-Name'"):
        mc.merge_method(lambda a: a, name="Bad-Name")


def test_string_annotations_are_evaluated():
    namespace = {"Delta": mc.Delta, "__name__": "m"}
    exec("from __future__ import annotations\ndef f(a: Delta, *, k: float = 1.0) -> Delta: return a", namespace)
    method = mc.merge_method(namespace["f"])
    assert method.inputs[0].space == MergeSpace.DELTA and method.hypers[0].kind is float


def test_build_time_errors(plugins):
    with pytest.raises(mc.RecipeError, match="takes 2 models, got 3"):
        mc.weighted_sum("a", "b", "c")
    with pytest.raises(mc.RecipeError, match="unknown hyperparameter 'alhpa'.*did you mean 'alpha'"):
        mc.weighted_sum("a", "b", alhpa=0.5)
    with pytest.raises(mc.RecipeError, match="expected a number or a block/class dict"):
        mc.weighted_sum("a", "b", alpha="half")
    with pytest.raises(mc.RecipeError, match="input 'b' must be in delta space, but it is in weight space"):
        mc.add_difference(mc.model(toy_model(1)), mc.model(toy_model(2)))
    with pytest.raises(mc.RecipeError, match="must share one merge space"):
        mc.weighted_sum(mc.subtract("a", "b"), mc.model(toy_model(1)))
    with pytest.raises(mc.RecipeError, match="takes at least 1 models, got 0"):
        mc.n_average()


def test_methods_are_reachable_as_attributes(plugins):
    assert mc.weighted_sum is mc.methods.weighted_sum is plugins.merge_methods.get("weighted_sum")
    with pytest.raises(AttributeError, match="did you mean 'weighted_sum'"):
        mc.methods.weigted_sum
    assert "weighted_sum" in dir(mc.methods)


def test_blocks_classes_default_build_sd_mecha_keys(plugins):
    assert mc.blocks("toy", "body", 0.1, 0.2) == {"toy_body_block_b0": 0.1, "toy_body_block_b1": 0.2}
    assert mc.blocks("toy", "body", 0.1, strict=False) == {"toy_body_block_b0": 0.1}
    assert mc.classes("toy", "body", norm=1) == {"toy_body_class_norm": 1}
    assert mc.default("toy", value=3) == {"toy_body_default": 3, "toy_head_default": 3}
    assert mc.default("toy", "head", 0.33) == {"toy_head_default": 0.33}
    with pytest.raises(mc.RecipeError, match="has 2 blocks .*got 1 values; pass strict=False"):
        mc.blocks("toy", "body", 0.1)
    with pytest.raises(mc.RecipeError, match="unknown block 'b9' in toy body; available blocks: b0, b1"):
        mc.blocks("toy", "body", b9=1)
    with pytest.raises(mc.RecipeError, match="unknown class 'norn'.*did you mean 'norm'"):
        mc.classes("toy", "body", norn=1)
    with pytest.raises(mc.MechaError, match="unknown component 'bdy'.*did you mean 'body'"):
        mc.default("toy", "bdy")
    with pytest.raises(mc.PluginError, match="unknown architecture 'tyo'.*did you mean 'toy'"):
        mc.blocks("tyo", "body", b0=1)


def test_per_key_values_class_then_block_mean_then_default_then_zero(plugins):
    alpha = (mc.default("toy", "body", 0.1) | mc.blocks("toy", "body", b1=0.6) | mc.classes("toy", "body", embed=0.9))
    a, b = toy_model(fill=0), toy_model(fill=1)
    out = mc.merge(mc.weighted_sum(a, b, alpha=alpha), save_dtype="fp32")
    expected = {"embed.weight": 0.9, "layers.0.weight": 0.1, "layers.0.bias": 0.1, "layers.1.weight": 0.6,
                "layers.1.norm.weight": 0.6, "head.weight": 0.0}
    for key, value in expected.items():
        assert out[key].unique().tolist() == [pytest.approx(value)], key
    assert set(expected) == {k for k, spec in TOY_KEYS.items() if spec[4]}


def test_a_key_in_several_blocks_takes_the_mean(plugins):
    def keys():
        yield mc.KeySpec("shared.weight", (2,), component="c", blocks=("x", "y"), class_="s")
    arch = mc.Architecture("two", (mc.Component("c", ("x", "y")),), keys)
    plugins.register(type("P", (), {"mecha_architectures": mc.hookimpl(lambda self: [arch])})(), "two")
    alpha = mc.blocks("two", "c", x=0.2, y=0.6)
    out = mc.merge(mc.weighted_sum({"shared.weight": torch.zeros(2)}, {"shared.weight": torch.ones(2)}, alpha=alpha),
                   save_dtype="fp32")
    assert out["shared.weight"].tolist() == [pytest.approx(0.4)] * 2


def test_per_model_hyperparameters_resolve_per_key(plugins):
    @mc.merge_method
    def weighted(*models: mc.Same, weight: tuple[float, ...] = ()) -> mc.Same:
        return sum(w * m for w, m in zip(weight, models))

    with pytest.raises(mc.RecipeError, match="expected 2 values \\(one per model\\), got 3"):
        weighted("a", "b", weight=[1, 2, 3])
    recipe = weighted(toy_model(fill=1), toy_model(fill=1), weight=[0.5, mc.blocks("toy", "body", b0=2.0)])
    out = mc.merge(recipe, save_dtype="fp32")
    assert out["layers.0.weight"].unique().tolist() == [2.5]  # 0.5 + 2.0
    assert out["head.weight"].unique().tolist() == [0.5]  # 0.5 + 0 (no value for head)
    assert weighted("a", "b", weight=0.3).hypers["weight"] == (0.3, 0.3)
