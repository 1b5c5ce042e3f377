"""Model inputs read under other key names (rename=), plugin recipe formats, block-and-class values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mecha_core as mc
from mecha_core.key_rename import parse_rules
from mecha_core.testing import as_plugin, write_model


def layers(*values: float) -> dict[str, torch.Tensor]:
    return {f"m.layers.{i}.w": torch.full((2, 2), float(v)) for i, v in enumerate(values)} | {"m.head": torch.ones(2)}


def test_rules_expand_ranges_pairwise():
    assert parse_rules("m.layers.{2..3}.>m.layers.{0..1}., m.head") == [
        ("m.layers.2.", "m.layers.0."), ("m.layers.3.", "m.layers.1."), ("m.head", "m.head")]


@pytest.mark.parametrize(("text", "message"), [
    ("a.{0..2}.>b.{0..1}.", "the ranges cover 3 and 2 numbers"),
    ("a.{3..1}.", "counts down"),
    ("a>b>c", "expected OLD>NEW or OLD"),
    ("a,,b", "empty rule"),
])
def test_bad_rules_are_refused_when_the_recipe_is_written(text, message):
    with pytest.raises(mc.RecipeError, match=message):
        mc.model("x.safetensors", rename=text)


def test_renamed_inputs_stack_into_a_deeper_model(mecha_plugins, tmp_path):
    path = write_model(layers(1, 2, 3), tmp_path / "a.safetensors")
    stacked = mc.serialize(mc.model(path, rename="m.layers.{0..2}.>m.layers.{0..2}., m.head"))
    top = mc.deserialize(stacked)
    assert top.rename == "m.layers.{0..2}.>m.layers.{0..2}., m.head"
    shifted = mc.model(path, rename="m.layers.{1..2}.>m.layers.{3..4}.")
    merged = mc.merge(mc.model(path, rename="m.layers.{0..2}.>m.layers.{0..2}., m.head"), save_dtype="fp32")
    assert sorted(merged) == ["m.head", "m.layers.0.w", "m.layers.1.w", "m.layers.2.w"]
    only_shifted = mc.merge(shifted, save_dtype="fp32")
    assert sorted(only_shifted) == ["m.layers.3.w", "m.layers.4.w"]
    assert torch.equal(only_shifted["m.layers.4.w"], torch.full((2, 2), 3.0))


def test_two_keys_renamed_to_one_name_are_refused(mecha_plugins, tmp_path):
    path = write_model(layers(1, 2), tmp_path / "a.safetensors")
    with pytest.raises(mc.MechaError, match="gives two keys the name"):
        mc.merge(mc.model(path, rename="m.layers.0.>x., m.layers.1.>x."))


def test_a_plugin_recipe_format_runs_with_its_options(mecha_plugins, tmp_path, capsys):
    from mecha_core.cli import main
    a = write_model(layers(1, 2), tmp_path / "a.safetensors")

    def read(path: Path) -> mc.ReadRecipe:
        return mc.ReadRecipe(mc.model(path.read_text().strip()), {"save_dtype": "bf16"})

    mecha_plugins.register(as_plugin(mc.RecipeFormat("single", (".single",), read)), "single")
    (tmp_path / "r.single").write_text(str(a))
    assert main(["merge", str(tmp_path / "r.single"), "-o", str(tmp_path / "o.safetensors"), "--quiet"]) == 0
    with mc.open_tensor_file(tmp_path / "o.safetensors") as file:
        assert file.tensors["m.layers.0.w"].torch_dtype_name == "bfloat16"
    assert main(["merge", str(tmp_path / "r.single"), "-o", str(tmp_path / "p.safetensors"), "--quiet",
                 "--save-dtype", "fp32"]) == 0
    with mc.open_tensor_file(tmp_path / "p.safetensors") as file:
        assert file.tensors["m.layers.0.w"].torch_dtype_name == "float32"


def test_a_recipe_format_that_fails_is_named(mecha_plugins, tmp_path, capsys):
    from mecha_core.cli import main

    def read(path: Path) -> mc.ReadRecipe:
        raise ValueError("boom")

    mecha_plugins.register(as_plugin(mc.RecipeFormat("broken", (".broken",), read)), "broken")
    (tmp_path / "r.broken").write_text("")
    assert main(["merge", str(tmp_path / "r.broken")]) == 1
    assert "recipe format 'broken' from plugin 'broken' failed: ValueError: boom" in capsys.readouterr().err


def test_read_recipe_refuses_options_merge_does_not_take():
    with pytest.raises(TypeError, match="unknown option 'threads'"):
        mc.ReadRecipe(mc.model("a.safetensors"), {"threads": 2})


def test_block_and_class_values_win_over_class_and_block(mecha_plugins, tmp_path):
    a = write_model({"m.layers.0.p.weight": torch.zeros(2), "m.layers.0.q.weight": torch.zeros(2),
                     "m.layers.1.p.weight": torch.zeros(2)}, tmp_path / "a.safetensors")
    b = write_model({k: torch.ones(2) for k in ("m.layers.0.p.weight", "m.layers.0.q.weight", "m.layers.1.p.weight")},
                    tmp_path / "b.safetensors")
    alpha = {"generic_model_block_m_layers_0_class_p": 0.25, "generic_model_class_p": 0.5,
             "generic_model_block_m_layers_0": 0.75}
    import mecha_methods
    mecha_plugins.register(mecha_methods, "methods")
    merged = mc.merge(mc.weighted_sum(a, b, alpha=alpha), save_dtype="fp32")
    assert merged["m.layers.0.p.weight"][0] == 0.25  # block and class
    assert merged["m.layers.1.p.weight"][0] == 0.5  # class
    assert merged["m.layers.0.q.weight"][0] == 0.75  # block
    with pytest.raises(mc.MechaError, match="unknown block/class key 'generic_model_block_m_layers_0_class_r'"):
        mc.merge(mc.weighted_sum(a, b, alpha={"generic_model_block_m_layers_0_class_r": 1.0}))


def _toy_family() -> mc.Architecture:
    """A family of `layers(...)` models: one block per layer, counted from the key names, and the
    count in its output_config (what an output folder's config.json is given)."""
    def specialize(file):
        count = 1 + max(int(name.split(".")[2]) for name in file.tensors if name.startswith("m.layers."))
        blocks = tuple(f"l{i}" for i in range(count))
        specs = [mc.KeySpec(f"m.layers.{i}.w", (2, 2), component="body", blocks=(f"l{i}",)) for i in range(count)]
        specs.append(mc.KeySpec("m.head", (2,), component="body"))
        origin = [stored for _, stored in getattr(file, "origins", {}).values()]
        return mc.Architecture("toy", (mc.Component("body", blocks),), keys=lambda: specs,
                               output_config={"depth": count, "read": sorted(origin)})
    return mc.Architecture("toy", (mc.Component("body"),), keys=lambda: (), specialize=specialize)


def test_a_family_merge_of_renamed_models_is_specialized_to_the_keys_they_make(mecha_plugins, tmp_path):
    import json
    import mecha_methods
    mecha_plugins.register(mecha_methods, "methods")
    mecha_plugins.register(as_plugin(_toy_family()), "toy")
    for name, values in (("a", (1, 2)), ("b", (3, 4, 5))):
        (tmp_path / name).mkdir()
        write_model(layers(*values), tmp_path / name / "model.safetensors")
        (tmp_path / name / "config.json").write_text(json.dumps({"depth": len(values), "kept": name}))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    stacked = mc.linear(mc.model(a, rename="m.layers.{0..1}.>m.layers.{0..1}."),
                        mc.model(b, rename="m.layers.{1..2}.>m.layers.{2..3}., m.head"))
    # l3 is a block of the output only: a has 2 layers, b 3
    merged = mc.merge(mc.weighted_sum(stacked, stacked, alpha=mc.blocks("toy", "body", l3=1.0)), f"{tmp_path / 'out'}/")
    config = json.loads((merged / "config.json").read_text())
    assert config["depth"] == 4 and config["kept"] == "a"
    assert config["read"] == ["m.head", "m.layers.0.w", "m.layers.1.w", "m.layers.1.w", "m.layers.2.w"]
    tensors = mc.merge(stacked, None)
    assert [float(tensors[f"m.layers.{i}.w"][0, 0]) for i in range(4)] == [1, 2, 4, 5]
    gap = mc.linear(mc.model(a, rename="m.layers.0."), mc.model(b, rename="m.layers.{1..2}.>m.layers.{2..3}., m.head"))
    with pytest.raises(mc.MergeError, match=r"no value for 1 keys of the toy model they make: m\.layers\.1\.w"):
        mc.merge(gap, None)
