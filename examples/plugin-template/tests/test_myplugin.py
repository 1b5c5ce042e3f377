"""Tests of mecha-myplugin with mecha's testing kit: no other installed plugin and no user config take part."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mecha
import mecha_myplugin
from mecha_core.testing import check_architecture, check_merge_method, tiny_model, write_model
from mecha_myplugin.architecture import TOY_MLP
from mecha_myplugin.methods import capped_lerp


@pytest.fixture
def plugins(mecha_plugins):
    """mecha with this plugin registered as if it were installed, and nothing else."""
    mecha_plugins.register(mecha_myplugin, "myplugin")
    return mecha_plugins


def test_the_plugin_provides_its_method_architecture_and_command(plugins):
    plugins.load_all_registries()
    record = plugins.records["myplugin"]
    assert record.status == "active"
    assert record.provides == {"merge_methods": ["capped_lerp"], "architectures": ["toy_mlp"],
                               "cli_commands": ["make_toy_mlp"]}


def test_capped_lerp_moves_each_entry_by_alpha_but_at_most_cap():
    a = torch.tensor([0.0, 0.0, 1.0, -1.0])
    b = torch.tensor([0.5, 10.0, -10.0, -1.0])
    # by hand: a + clamp(0.5 * (b - a), -1, 1)
    assert capped_lerp.function(a, b, alpha=0.5, cap=1.0).tolist() == [0.25, 1.0, 0.0, -1.0]


def test_capped_lerp_keeps_the_rules_of_merge_methods():
    # same shape out, inputs untouched, reproducible, and the same values on chunks (elementwise)
    check_merge_method(capped_lerp)
    check_merge_method(capped_lerp, alpha=1.0, cap=100.0)


def test_toy_mlp_declaration_agrees_with_its_generator():
    tensors = check_architecture(TOY_MLP)
    assert len(tensors) == 2 + 4 * 4 + 2
    assert tensors["layers.0.linear.weight"].shape == (16, 8)  # tiny: hidden 16, inputs 8


def test_generated_and_aliased_files_are_detected_as_toy_mlp(plugins, mecha_cli, tmp_path):
    model = tiny_model("toy_mlp", seed=1)
    write_model(model, tmp_path / "a.safetensors")
    renamed = {name.replace("head.", "classifier."): tensor for name, tensor in model.items()}
    write_model(renamed, tmp_path / "old.safetensors")
    for name in ("a", "old"):
        result = mecha_cli("inspect", tmp_path / f"{name}.safetensors", "--json")
        assert result.status == 0, result.err
        assert result.json()["architecture"] == "toy_mlp"


def test_block_wise_alpha_reaches_the_right_layers(plugins):
    a, b = tiny_model("toy_mlp", seed=1), tiny_model("toy_mlp", seed=2)
    alpha = mecha.blocks("toy_mlp", "body", layer0=0.0, layer3=1.0) | mecha.default("toy_mlp", "head", 1.0)
    out = mecha.merge(capped_lerp(a, b, alpha=alpha, cap=100.0), save_dtype="fp32")
    assert out["layers.0.linear.weight"].equal(a["layers.0.linear.weight"])  # alpha 0
    assert out["layers.1.norm.bias"].equal(a["layers.1.norm.bias"])  # no value given: 0
    torch.testing.assert_close(out["layers.3.linear.weight"], b["layers.3.linear.weight"])  # alpha 1, no cap hit
    torch.testing.assert_close(out["head.bias"], b["head.bias"])
    assert out["normalizer.std"].equal(a["normalizer.std"])  # passed through from the first model


def test_cap_bounds_every_change(plugins):
    a, b = tiny_model("toy_mlp", seed=1), tiny_model("toy_mlp", seed=2)
    out = mecha.merge(capped_lerp(a, b, alpha=1.0, cap=0.05), save_dtype="fp32")
    for name in ("layers.2.linear.weight", "head.weight"):
        assert (out[name] - a[name]).abs().max().item() == pytest.approx(0.05)


def test_make_toy_mlp_writes_the_generator_model(plugins, mecha_cli, tmp_path):
    path = tmp_path / "m.safetensors"
    result = mecha_cli("make_toy_mlp", path, "--seed", "3", "--dtype", "fp16")
    assert result.status == 0, result.err
    assert f"wrote {path}" in result.out
    expected = tiny_model("toy_mlp", seed=3, dtype=torch.float16)
    with mecha.open_tensor_file(path) as written:
        assert set(written.tensors) == set(expected)
        for name, tensor in expected.items():
            assert written.read(name).equal(tensor), name


def test_make_toy_mlp_refuses_other_suffixes(plugins, mecha_cli, tmp_path):
    result = mecha_cli("make_toy_mlp", tmp_path / "m.ckpt")
    assert result.status == 1
    assert "must end in .safetensors" in result.err
    assert not (tmp_path / "m.ckpt").exists()
