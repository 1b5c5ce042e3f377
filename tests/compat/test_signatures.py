"""Every 0.0.25 top-level helper and merger call keeps its signature: parameter names, kinds and order,
and defaults except where the README's "Coming from sd-mecha" table says what changed."""

from __future__ import annotations

import inspect

import pytest

import mecha_compat

# 0.0.25 helpers and what their defaults became (name -> {parameter: mecha default})
HELPERS = {
    "add_difference": {}, "add_perpendicular": {}, "add_difference_ties": {}, "add_difference_ties_extended": {},
    "ties_with_dare": {}, "model_stock_n_models": {},
    "copy_region": {"device": None}, "tensor_sum": {"device": None}, "rotate": {"device": None},
    "dropout": {},
    "model": {"model_arch": None, "model_type": None}, "lora": {"model_arch": None},
    "parameter": {"merge_space": mecha_compat.MergeSpace.BASE}, "set_log_level": {},
    "serialize_and_save": {}, "deserialize_path": {}, "merge_and_save": {},
}
MERGER = {"__init__": {"default_dtype": "float64", "tqdm": None},
          "merge_and_save": {"save_dtype": "float16", "total_buffer_size": None}}


def _shape(function, changed):
    shape = []
    for param in inspect.signature(function).parameters.values():
        default = changed.get(param.name, param.default)
        shape.append((param.name, param.kind, default if default is not param.empty else "<required>"))
    return shape


def _without_annotations(function):
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_helper_signatures_are_0_0_25s(name, sd_mecha):
    ours, theirs = getattr(mecha_compat, name), getattr(sd_mecha, name)
    assert _without_annotations(ours) == _without_annotations(theirs)
    expected = _shape(theirs, HELPERS[name])
    actual = _shape(ours, {})
    for (param, kind, default), (_, _, mine) in zip(expected, actual):
        if param == "seed":  # 0.0.25's None failed at merge time; here it draws a random seed
            assert mine is None
        elif param == "dtype" or param == "device" and name not in ("copy_region", "tensor_sum", "rotate"):
            assert mine is None and default is None
        else:
            assert mine == default, f"{name}({param}=...)"


@pytest.mark.parametrize("method", sorted(MERGER))
def test_recipe_merger_signature_is_0_0_25s(method, sd_mecha):
    ours = getattr(mecha_compat.RecipeMerger, method)
    theirs = getattr(sd_mecha.RecipeMerger, method)
    assert _without_annotations(ours) == _without_annotations(theirs)
    for name, default in MERGER[method].items():
        assert inspect.signature(ours).parameters[name].default == default


def test_methods_of_0_0_25_are_here_with_their_tensor_function(sd_mecha, plugins):
    """sd_mecha.<method> for every method 0.0.25 exported at the top level; ``__wrapped__`` is the tensor
    function, which a 0.0.x custom method may call."""
    for name in ("weighted_sum", "slerp", "n_average", "subtract", "perpendicular_component", "geometric_sum",
                 "train_difference", "ties_sum", "ties_sum_extended", "distribution_crossover", "crossover",
                 "clamp", "ties_sum_with_dropout", "model_stock_for_tensor", "geometric_median"):
        assert hasattr(sd_mecha, name)
        method = getattr(mecha_compat, name)
        assert callable(method.__wrapped__) and method.__name__ == name


def test_the_names_of_the_0_0_25_top_level_are_all_here(sd_mecha, plugins):
    public = {n for n in dir(sd_mecha) if not n.startswith("_") and callable(getattr(sd_mecha, n))}
    internal = {"Optional", "Dict", "Mapping", "Tensor", "RecipeNodeOrPath", "path_to_node"}
    missing = [n for n in sorted(public - internal) if not hasattr(mecha_compat, n)]
    assert not missing
