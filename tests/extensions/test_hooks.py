"""Every hook, from a plugin implementing it to where mecha uses what it returns; every hook documented.

The meta-tests at the end keep it so: each hookspec needs a ``test_hook_<name>`` here and a heading
with its exact signature in docs/plugins.md.
"""

from __future__ import annotations

import argparse
import inspect
import re
import types
from pathlib import Path

import pytest
import torch

import mecha_core as mecha
from mecha_core import Architecture, CliCommand, Component, Delta, KeySpec, RecipeError, Same, Weight
from mecha_core import hookimpl, hookspecs
from mecha_core.plugins import create_manager
from mecha_core.testing import as_plugin, check_architecture, check_merge_method, write_model

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
HOOKS = sorted(name for name in vars(create_manager().hook) if not name.startswith("_"))

PAIR = Architecture(
    "pair",
    (Component("body", ("first", "second")),),
    lambda: [KeySpec("first.weight", (3, 2), component="body", blocks=("first",), class_="weight"),
             KeySpec("second.weight", (3, 2), component="body", blocks=("second",), class_="weight"),
             KeySpec("scale", (2,), component="buffers", merged=False)],
    summary="two weights and a buffer",
)


def pair_model(offset: float) -> dict[str, torch.Tensor]:
    return {"first.weight": torch.arange(6.0).reshape(3, 2) + offset,
            "second.weight": torch.ones(3, 2) * offset, "scale": torch.tensor([2.0, 3.0])}


@mecha.merge_method(elementwise=True)
def add_delta(a: Weight, d: Delta, *, alpha: float = 1.0) -> Weight:
    """a + alpha * d"""
    return a + alpha * d


@mecha.merge_method(elementwise=True)
def lerp(a: Same, b: Same, *, alpha: float = 0.5) -> Same:
    """a + alpha * (b - a)"""
    return a + alpha * (b - a)


def doc_example(hook: str) -> types.ModuleType:
    """The code block of a hook's section in docs/plugins.md, run as a plugin module."""
    section = DOCS.read_text(encoding="utf-8").split(f"### `{hook}(", 1)[1].split("\n## ", 1)[0]
    source = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    module = types.ModuleType(f"docs_example_{hook}")
    exec(compile(source, f"docs/plugins.md, example of {hook}", "exec"), module.__dict__)  # noqa: S102
    return module


class MethodsPlugin:
    @hookimpl
    def mecha_merge_methods(self):
        return [add_delta, lerp]


def test_hook_mecha_merge_methods(mecha_plugins, mecha_cli):
    mecha_plugins.register(MethodsPlugin(), "arith")
    assert mecha.lerp is mecha.methods.lerp is lerp
    a, b = pair_model(1.0), pair_model(3.0)
    out = mecha.merge(mecha.lerp(a, b), save_dtype="fp32")
    assert out["second.weight"].tolist() == [[2.0, 2.0]] * 3  # 1 + 0.5 * (3 - 1), by hand
    listed = {m["name"]: m for m in mecha_cli("methods", "--json").json()}
    assert listed["add_delta"]["plugin"] == "'arith'"
    assert [(i["name"], i["space"]) for i in listed["add_delta"]["inputs"]] == [("a", "weight"), ("d", "delta")]


def test_hook_mecha_architectures(mecha_plugins, mecha_cli, tmp_path):
    mecha_plugins.register(as_plugin(PAIR, lerp), "pairs")
    a = write_model(pair_model(1.0), tmp_path / "a.safetensors")
    b = write_model(pair_model(3.0), tmp_path / "b.safetensors")
    assert mecha_cli("inspect", a, "--json").json()["architecture"] == "pair"
    info = mecha_cli("info", "pair", "--json").json()
    assert info["components"] == {"body": {"blocks": ["first", "second"], "classes": ["weight"]}}
    # a block-wise value reaches only its block's key: the architecture was detected and used
    out = mecha.merge(lerp(a, b, alpha=mecha.blocks("pair", "body", second=1.0)), save_dtype="fp32")
    assert out["first.weight"].equal(pair_model(1.0)["first.weight"])  # no value for block first: 0
    assert out["second.weight"].equal(pair_model(3.0)["second.weight"])  # block second: 1


def test_hook_mecha_model_types(mecha_plugins, mecha_cli, tmp_path):
    # the "diff" model type of the documentation's example
    mecha_plugins.register(doc_example("mecha_model_types"), "diffs")
    mecha_plugins.register(as_plugin(PAIR, add_delta), "pairs")
    base = write_model(pair_model(1.0), tmp_path / "base.safetensors")
    diff = write_model({f"{k}.diff": torch.full((3, 2), 0.5) for k in ("first.weight", "second.weight")},
                       tmp_path / "d.safetensors")
    report = mecha_cli("inspect", diff, "--json").json()
    assert (report["model_type"], report["merge_space"], report["architecture"]) == ("diff", "delta", "pair")
    out = mecha.merge(add_delta(base, diff, alpha=2.0), save_dtype="fp32")
    assert out["first.weight"].equal(pair_model(1.0)["first.weight"] + 1.0)  # + 2 * 0.5
    assert out["scale"].equal(pair_model(1.0)["scale"])  # not in the diff: passed through from the base
    with pytest.raises(RecipeError, match="input 'a' must be in weight space, but it is in delta space"):
        mecha.merge(add_delta(diff, base))


def test_hook_mecha_cli_commands(mecha_plugins, mecha_cli, tmp_path):
    def count(args: argparse.Namespace) -> int:
        print(len(mecha.get_plugins().merge_methods))
        return 0

    mecha_plugins.register(as_plugin(CliCommand("count_methods", "how many merge methods", count), lerp), "cli")
    result = mecha_cli("count_methods")
    assert (result.status, result.out) == (0, "1\n")
    assert "how many merge methods" in mecha_cli("--help").out
    # the documentation's example command
    mecha_plugins.register(doc_example("mecha_cli_commands"), "counter")
    model = write_model(pair_model(1.0), tmp_path / "a.safetensors")
    assert mecha_cli("count_parameters", model).out == f"{6 + 6 + 2}\n"


def test_hook_mecha_recipe_formats(mecha_plugins, mecha_cli, tmp_path):
    import mecha_methods
    mecha_plugins.register(mecha_methods, "methods")
    mecha_plugins.register(doc_example("mecha_recipe_formats"), "pairs")  # the documentation's ".pair" format
    a = write_model(pair_model(1.0), tmp_path / "a.safetensors")
    b = write_model(pair_model(3.0), tmp_path / "b.safetensors")
    (tmp_path / "mix.pair").write_text(f"{a} {b}")
    result = mecha_cli("merge", tmp_path / "mix.pair", "-o", tmp_path / "out.safetensors", "--quiet")
    assert result.status == 0, result.err
    with mecha.open_tensor_file(tmp_path / "out.safetensors") as file:
        assert file.tensors["second.weight"].torch_dtype_name == "bfloat16"  # the format's option
        assert file.read("second.weight").float().tolist() == [[2.0, 2.0]] * 3  # (1 + 3) / 2
    assert "recipe_formats" in mecha_cli("plugins", "--json").out


def test_hook_mecha_executors(mecha_plugins, mecha_cli, tmp_path):
    # the documentation's example: every part in turn, in this process
    mecha_plugins.register(doc_example("mecha_executors"), "in_turn")
    mecha_plugins.register(as_plugin(PAIR, lerp), "pairs")
    assert "  executors: in_turn" in mecha_cli("plugins").out
    a = write_model(pair_model(1.0), tmp_path / "a.safetensors")
    b = write_model(pair_model(3.0), tmp_path / "b.safetensors")
    for executor in ("local", "in_turn"):
        (tmp_path / executor).mkdir()
        mecha.merge(lerp(a, b, alpha=0.25), tmp_path / executor / "out.safetensors", executor=executor)
    assert (tmp_path / "in_turn" / "out.safetensors").read_bytes() == (tmp_path / "local" / "out.safetensors").read_bytes()
    assert [p.name for p in (tmp_path / "in_turn").iterdir()] == ["out.safetensors"]  # no temporary file left


# meta-tests ------------------------------------------------------------------------------------------
def documented_hooks() -> dict[str, str]:
    """Hook name -> the signature its heading in docs/plugins.md shows."""
    found = re.findall(r"^### `((mecha_\w+)\(.*)`$", DOCS.read_text(encoding="utf-8"), re.MULTILINE)
    return {name: signature for signature, name in found}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    signature = str(inspect.signature(getattr(hookspecs, hook))).replace("'", "")
    assert documented_hooks().get(hook) == f"{hook}{signature}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    assert callable(globals().get(f"test_hook_{hook}")), f"write test_hook_{hook} in {__file__}"


def test_the_docs_describe_no_hook_that_does_not_exist():
    assert sorted(documented_hooks()) == HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_example_in_the_docs_works_as_a_plugin(hook, mecha_plugins):
    mecha_plugins.register(doc_example(hook), "example")  # strict: a broken example raises here
    mecha_plugins.load_all_registries()
    record = mecha_plugins.records["example"]
    assert record.hooks == [hook]
    ((attribute, names),) = record.provides.items()
    for name in names:
        provided = getattr(mecha_plugins, attribute).get(name)
        if isinstance(provided, mecha.MergeMethod):
            check_merge_method(provided)
        elif isinstance(provided, Architecture):
            check_architecture(provided)
