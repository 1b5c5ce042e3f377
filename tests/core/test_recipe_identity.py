"""Recipes as values: a node's hash is computed once, equality compares trees without recursion, and
every walk is iterative, so a chain 10,000 merges deep and a recipe whose sub-recipes are shared 40
levels deep (2**40 paths) hash, compare, serialize, plan and merge."""

from __future__ import annotations

import torch

import mecha_core as mc
from mecha_core.merge import make_options
from mecha_core.planning import plan_merge
from mecha_core.recipe import walk
from mecha_core.testing import write_model

from .conftest import toy_model

DEPTH = 10_000


def chain(a, b, alpha: float, depth: int = DEPTH):
    node, b = mc.model(a), mc.model(b)
    for _ in range(depth):
        node = mc.weighted_sum(node, b, alpha=alpha)
    return node


def tower(leaf, depth: int = 40):
    """weighted_sum(x, x) of weighted_sum(y, y) of ...: one node per level, 2**depth paths to the leaf."""
    node = mc.model(leaf)
    for _ in range(depth):
        node = mc.weighted_sum(node, node, alpha=0.3)
    return node


def test_equal_trees_built_apart_are_equal_with_equal_hashes(plugins):
    one = mc.add_difference("a", mc.subtract("b", "c"), alpha=0.5)
    two = mc.add_difference("a", mc.subtract("b", "c"), alpha=0.5)
    assert one is not two and one == two and hash(one) == hash(two)
    assert one != mc.add_difference("a", mc.subtract("b", "c"), alpha=0.25)
    assert one != mc.add_difference("a", mc.subtract("c", "b"), alpha=0.5)
    assert one != "a" and mc.model("a") != mc.parameter("a")
    assert len({one, two, mc.model("a"), mc.model("a")}) == 2
    state = toy_model()
    assert mc.model(state) != mc.model(toy_model())  # in-memory models: the same dict, not equal values
    assert mc.model(state) == mc.model(state)


def test_a_chain_10000_deep_hashes_compares_serializes_and_reads_back(plugins):
    one, two = chain("a", "b", 0.5), chain("a", "b", 0.5)
    assert hash(one) == hash(two) and one == two
    assert one != chain("z", "b", 0.5)  # differs only at the deepest leaf
    assert len(list(walk(one))) == DEPTH + 2  # each model once, every call once
    assert repr(one).startswith("weighted_sum(weighted_sum(") and "weighted_sum(...)" in repr(one)
    text = mc.serialize(one)
    assert text.count("\n") == DEPTH + 3  # version, two models, one line per call
    assert mc.deserialize(text) == one


def test_a_chain_10000_deep_plans(plugins, tmp_path):
    a = write_model(toy_model(seed=1), tmp_path / "a.safetensors")
    b = write_model(toy_model(seed=2), tmp_path / "b.safetensors")
    plan = plan_merge(chain(a, b, 0.5), make_options(), plugins)
    try:
        assert [leaf.path for leaf in plan.leaves] == [a, b]
        assert {k.name for k in plan.keys if k.merge} == {k for k, v in toy_model().items() if k != "step"} - {"decoder.weight"}
        assert all(k.chunkable for k in plan.keys if k.merge)
    finally:
        plan.close()


def test_a_chain_10000_deep_merges_to_the_closed_form(plugins):
    a, b = {"w": torch.randn(3, 4, dtype=torch.float64)}, {"w": torch.randn(3, 4, dtype=torch.float64)}
    alpha = 1e-4
    out = mc.merge(chain(a, b, alpha), work_dtype="float64", save_dtype="float32")
    # x_n = (1 - alpha) x_(n-1) + alpha b, so x_n = b + (1 - alpha)**n (a - b)
    expected = b["w"] + (1 - alpha) ** DEPTH * (a["w"] - b["w"])
    torch.testing.assert_close(out["w"].double(), expected, rtol=0, atol=1e-6)


def test_a_shared_tower_40_deep_hashes_compares_serializes_and_merges(plugins, tmp_path):
    path = write_model(toy_model(seed=3), tmp_path / "a.safetensors")
    one, two = tower(path), tower(path)
    assert one == two and hash(one) == hash(two) and one != tower(tmp_path / "other.safetensors")
    assert mc.deserialize(mc.serialize(one)) == one
    assert mc.serialize(one).count("merge") == 40
    out = mc.merge(one, save_dtype="float32")  # weighted_sum(x, x) is x, level after level
    torch.testing.assert_close(out["layers.0.weight"], toy_model(seed=3)["layers.0.weight"])


def test_the_merge_cache_keys_on_recipe_values(plugins):
    """Re-merging an equal recipe built anew (another alpha on top) finds the per-key cache entries."""
    calls = []

    @mc.merge_method
    def costly(a: mc.Same, *, cache=None) -> mc.Same:
        calls.append(cache is not None and "seen" in cache)
        if cache is not None:
            cache["seen"] = True
        return a

    plugins.register(mc.testing.as_plugin(costly), "costly")
    a, b = toy_model(seed=1), toy_model(seed=2)
    cache: dict = {}
    mc.merge(mc.weighted_sum(costly(mc.weighted_sum(a, b)), a, alpha=0.2), cache=cache)
    assert calls and not any(calls)
    calls.clear()
    mc.merge(mc.weighted_sum(costly(mc.weighted_sum(a, b)), a, alpha=0.7), cache=cache)
    assert calls and all(calls)
