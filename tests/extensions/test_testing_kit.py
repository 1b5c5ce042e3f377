"""mecha_core.testing: the fixtures and checks plugin authors rely on catch what they promise to catch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mecha_core as mecha
from mecha_core import Architecture, CliCommand, Component, KeySpec, PluginError, Same
from mecha_core.testing import as_plugin, check_architecture, check_merge_method, tiny_model


@mecha.merge_method(elementwise=True)
def weighted_mean(*models: Same, weights: tuple[float, ...] = 1.0) -> Same:
    """sum(w_i * m_i) / sum(w_i)"""
    total = sum(w * m for w, m in zip(weights, models))
    return total / sum(weights)


def test_mecha_plugins_is_a_fresh_strict_set_with_only_the_core(mecha_plugins):
    assert list(mecha_plugins.records) == ["core"]
    assert list(mecha_plugins.merge_methods) == []  # the installed mecha-methods is not loaded
    assert list(mecha_plugins.model_types) == ["base"]
    assert mecha.get_plugins() is mecha_plugins
    with pytest.raises(PluginError, match="invalid hook implementation: unknown hook 'mecha_architecture'"):
        mecha_plugins.register(type("Typo", (), {"mecha_architecture": mecha.hookimpl(lambda self: [])})(), "typo")


def test_as_plugin_routes_each_object_to_its_hook(mecha_plugins):
    arch = Architecture("solo", (Component("c", ("b",)),), lambda: [KeySpec("w", (2,), component="c", blocks=("b",))])
    command = CliCommand("solo_cmd", "x", lambda args: 0)
    mecha_plugins.register(as_plugin(weighted_mean, arch, command), "loose")
    mecha_plugins.load_all_registries()
    record = mecha_plugins.records["loose"]
    assert record.hooks == ["mecha_architectures", "mecha_cli_commands", "mecha_merge_methods"]
    assert record.provides == {"merge_methods": ["weighted_mean"], "architectures": ["solo"],
                               "cli_commands": ["solo_cmd"]}
    with pytest.raises(TypeError, match="as_plugin\\(\\) takes MergeMethod, Architecture, ModelType, CliCommand, "
                                        "RecipeFormat, Executor objects, got 'weighted_mean'"):
        as_plugin("weighted_mean")


def test_mecha_cli_reports_status_and_output(mecha_plugins, mecha_cli):
    print("before")  # not part of the command's output
    result = mecha_cli("plugins", "--json")
    assert result.status == 0 and result.err == ""
    assert [row["name"] for row in result.json()["plugins"]] == ["core"]
    assert mecha_cli("--help").status == 0
    assert mecha_cli("no_such_command").status == 2


def test_check_merge_method_passes_a_correct_variadic_method_and_returns_its_result():
    torch.manual_seed(0)
    result = check_merge_method(weighted_mean, weights=(1.0, 1.0, 2.0), seed=3)
    generator = torch.Generator().manual_seed(3)  # the inputs it draws: three models of shape (6, 7)
    a, b, c = (torch.randn((6, 7), generator=generator) for _ in range(3))
    torch.testing.assert_close(result, (a + b + 2 * c) / 4)


@pytest.mark.parametrize(("body", "broken_rule"), [
    ("return a.mul_(2)", "modified input 0 in place"),
    ("return a / a.norm()", "is declared elementwise but gives other values on chunks"),
    ("return a + torch.rand(a.shape)", "gives different results for one seed"),
    ("return a.sum(0)", "returned shape \\[7\\], expected \\[6, 7\\]"),
    ("return (a > 0)", "returned torch.bool, expected a floating-point tensor"),
    ("return a.tolist()", "returned list, expected a tensor"),
])
def test_check_merge_method_names_the_broken_rule(body, broken_rule):
    namespace = {"torch": torch, "Same": Same}
    exec(f"def wrong(a: Same) -> Same:\n    {body}\n", namespace)  # noqa: S102 - one line of test source
    method = mecha.merge_method(namespace["wrong"], elementwise=True)
    with pytest.raises(AssertionError, match=f"merge method 'wrong' {broken_rule}"):
        check_merge_method(method)


def arch_with(keys: list[KeySpec], blocks: tuple[str, ...] = ("b0", "b1"), generate=None) -> Architecture:
    return Architecture("checked", (Component("c", blocks),), lambda: keys, generate=generate)


KEYS = [KeySpec("w0", (8, 4), component="c", blocks=("b0",), class_="w"),
        KeySpec("w1", (8,), component="c", blocks=("b1",), class_="w"),
        KeySpec("steps", (), dtype="int64", component="buffers", merged=False)]


def make(shapes: dict[str, tuple[int, ...]], *, honor_dtype: bool = True):
    def generate(seed: int = 0, dtype=None, tiny: bool = True):
        generator = torch.Generator().manual_seed(seed)
        out = {name: torch.randn(shape, generator=generator).to(dtype if honor_dtype else torch.float32)
               for name, shape in shapes.items()}
        out["steps"] = torch.tensor(seed)
        return out
    return generate


def test_check_architecture_passes_a_consistent_one_and_returns_its_tiny_model():
    tensors = check_architecture(arch_with(KEYS, generate=make({"w0": (2, 1), "w1": (2,)})), seed=5)
    assert sorted(tensors) == ["steps", "w0", "w1"] and tensors["steps"].item() == 5
    assert check_architecture(arch_with(KEYS)) == {}  # no generator: only the declaration is checked


@pytest.mark.parametrize(("arch", "problem"), [
    (arch_with(KEYS, blocks=("b0", "b1", "b2")), "blocks of component 'c' hold no key: \\['b2'\\]"),
    (arch_with(KEYS, generate=make({"w0": (2, 1)})), "leaves out required keys: \\['w1'\\]"),
    (arch_with(KEYS, generate=make({"w0": (2, 1), "w1": (2,), "extra": (1,)})), "lacks: \\['extra'\\]"),
    (arch_with(KEYS, generate=make({"w0": (2,), "w1": (2,)})), "key 'w0' has 1 dimensions, declared 2"),
    (arch_with(KEYS, generate=make({"w0": (2, 1), "w1": (2,)}, honor_dtype=False)), "dtype=torch.float16"),
])
def test_check_architecture_names_the_problem(arch, problem):
    with pytest.raises(AssertionError, match=f"architecture 'checked'.*{problem}"):
        check_architecture(arch)


def test_tiny_model_uses_the_registered_architecture(mecha_plugins):
    arch = arch_with(KEYS, generate=make({"w0": (2, 1), "w1": (2,)}))
    mecha_plugins.register(as_plugin(arch), "checked")
    tensors = tiny_model("checked", seed=2, dtype=torch.float16)
    assert tensors["w0"].dtype == torch.float16 and tensors["steps"].item() == 2
    with pytest.raises(ValueError, match="architecture 'checked' has no generator"):
        tiny_model(dataclasses.replace(arch, generate=None))


def test_check_merge_method_refuses_coefficients_the_function_does_not_compute():
    def add(a: Same, b: Same, *, alpha: float = 0.5) -> Same:
        return a + alpha * b

    honest = mecha.merge_method(add, elementwise=True, coefficients=lambda count, alpha: (1.0, alpha))
    check_merge_method(honest, alpha=0.25)
    wrong = mecha.merge_method(add, elementwise=True, coefficients=lambda count, alpha: (1.0 - alpha, alpha))
    with pytest.raises(AssertionError, match=r"merge method 'add' declares coefficients \[0.75, 0.25\] but"):
        check_merge_method(wrong, alpha=0.25)
