"""Stacking layer ranges of models of different depths into a deeper model (mergekit's "frankenmerge"),
with mecha-llm: the output is specialized to its own layer count, its folder's config.json says it,
and the tensors are mergekit's, layer by layer; transformers loads the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mecha_core as mc
from mecha_core.cli import main

from .conftest import mecha_config, merged_tensors, mergekit_config, read_tensors, run_mergekit

# base has 4 layers, deep 6: 4 + 3 = 7 layers
PASSTHROUGH = """
slices:
  - sources:
      - model: @base
        layer_range: [0, 4]
  - sources:
      - model: @deep
        layer_range: [3, 6]
merge_method: passthrough
dtype: float32
"""

# a slerp per slice, the second pairing ranges of models of different depths: 4 + 3 = 7 layers
SLERP = """
slices:
  - sources:
      - model: @base
        layer_range: [0, 4]
      - model: @a
        layer_range: [0, 4]
  - sources:
      - model: @base
        layer_range: [1, 4]
      - model: @deep
        layer_range: [3, 6]
    parameters:
      t:
        - filter: self_attn
          value: [0.1, 0.9]
        - value: [0.8, 0.3, 0.6]
merge_method: slerp
base_model: @base
parameters:
  t: 0.3
dtype: float32
"""

CASES = {"passthrough": PASSTHROUGH, "slerp": SLERP}


@pytest.fixture
def llm_plugins(plugins):
    import mecha_llm
    plugins.register(mecha_llm, "llm")
    return plugins


@pytest.fixture(scope="session")
def stacked_by_mergekit(llamas, mergekit_python, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mergekit_stacked")
    jobs = [(mergekit_config(text, llamas, folder, f"{case}.yml"), folder / case) for case, text in CASES.items()]
    run_mergekit(mergekit_python, jobs)
    return {case: out for case, (_, out) in zip(CASES, jobs)}


def merge_folder(text: str, llamas: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "out"
    assert main(["merge", str(mecha_config(text, llamas, tmp_path)), "-o", f"{out}/", "--quiet"]) == 0
    return out


def config_of(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_folder_is_mergekits_tensor_by_tensor(case, llm_plugins, llamas, tmp_path, stacked_by_mergekit):
    reference = merged_tensors(stacked_by_mergekit[case])
    out = merge_folder(CASES[case], llamas, tmp_path)
    merged = merged_tensors(out)
    assert sorted(merged) == sorted(reference)
    assert max(int(k.split(".")[2]) for k in merged if k.startswith("model.layers.")) == 6
    for key, value in reference.items():
        assert merged[key].dtype == value.dtype, key
        if case == "passthrough":
            assert torch.equal(merged[key], value), key
        else:
            torch.testing.assert_close(merged[key], value, rtol=2e-5, atol=2e-6, msg=lambda m: f"{key}: {m}")
    assert config_of(out)["num_hidden_layers"] == config_of(stacked_by_mergekit[case])["num_hidden_layers"] == 7


def test_passthrough_layers_are_the_input_layers_they_name(llm_plugins, llamas, tmp_path):
    out = merge_folder(PASSTHROUGH, llamas, tmp_path)
    merged = read_tensors(out / "model.safetensors")
    base, deep = read_tensors(llamas["base"] / "model.safetensors"), read_tensors(llamas["deep"] / "model.safetensors")
    sources = [(base, k) for k in range(4)] + [(deep, j) for j in range(3, 6)]  # output layer -> (model, layer)
    for layer, (model, j) in enumerate(sources):
        names = [k for k in model if k.startswith(f"model.layers.{j}.")]
        assert len(names) == 9
        for name in names:
            assert torch.equal(merged[name.replace(f"layers.{j}.", f"layers.{layer}.", 1)], model[name]), (layer, name)
    # the embeddings come with the first slice, the final norm and the head with the last (as mergekit)
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(merged["model.norm.weight"], deep["model.norm.weight"])
    assert torch.equal(merged["lm_head.weight"], deep["lm_head.weight"])
    assert len(merged) == 1 + 7 * 9 + 2
    config = config_of(out)
    assert config == {**config_of(llamas["base"]), "num_hidden_layers": 7}


def test_block_values_name_the_output_layers(llm_plugins, llamas, tmp_path, capsys):
    from mecha_mergekit.convert import read_config
    config = mecha_config(SLERP, llamas, tmp_path)
    text = mc.serialize(read_config(config).recipe)
    assert "llm_layers_block_layer6" in text and "layer7" not in text
    assert 'rename="model.layers.{3..5}.>model.layers.{4..6}.' in text
    capsys.readouterr()
    assert main(["explain", str(config), "--json"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert explained["components"]["layers"] == [f"layer{i}" for i in range(7)]
    assert explained["plan"]["components"]


def test_transformers_loads_the_stacked_folder(llm_plugins, llamas, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = merge_folder(PASSTHROUGH, llamas, tmp_path)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.config.num_hidden_layers == 7 and len(model.model.layers) == 7
    deep = read_tensors(llamas["deep"] / "model.safetensors")
    assert torch.equal(model.model.layers[6].mlp.up_proj.weight, deep["model.layers.5.mlp.up_proj.weight"])
    model(torch.tensor([[1, 2, 3]]))  # runs


def test_a_layer_range_past_a_model_names_the_file_slice_and_model(llm_plugins, llamas, tmp_path, capsys):
    text = PASSTHROUGH.replace("[3, 6]", "[3, 8]")
    config = mecha_config(text, llamas, tmp_path)
    assert main(["merge", str(config), "-o", f"{tmp_path / 'out'}/"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and not (tmp_path / "out").exists()
    assert (f"{config}: slices[1].sources[0]: model {llamas['deep']} has 6 layers (0..5); layer_range [3, 8] asks "
            f"for layers up to 7") in error


def test_renames_leaving_a_layer_out_are_refused(llm_plugins, llamas):
    base, deep = str(llamas["base"]), str(llamas["deep"])
    stacked = mc.linear(mc.model(base, rename="model.embed_tokens, model.layers.{0..3}.>model.layers.{0..3}."),
                        mc.model(deep, rename="model.layers.{3..5}.>model.layers.{5..7}., model.norm, lm_head"))
    with pytest.raises(mc.MergeError, match=r"no value for 9 keys of the llm model they make: model\.layers\.4\."):
        mc.merge(stacked, None)


def test_a_stacking_recipe_merges_without_mergekit(llm_plugins, llamas, tmp_path):
    """The core does it for any recipe renaming its models, not only for converted configurations."""
    base, deep = str(llamas["base"]), str(llamas["deep"])
    stacked = mc.linear(mc.model(base, rename="model.embed_tokens, model.layers.{0..3}.>model.layers.{0..3}."),
                        mc.model(deep, rename="model.layers.{0..5}.>model.layers.{4..9}., model.norm, lm_head"))
    out = tmp_path / "ten"
    mc.merge(stacked, f"{out}/", save_dtype="fp32")
    assert config_of(out)["num_hidden_layers"] == 10
    merged = read_tensors(out / "model.safetensors")
    deep_tensors = read_tensors(llamas["deep"] / "model.safetensors")
    assert torch.equal(merged["model.layers.9.self_attn.q_proj.weight"], deep_tensors["model.layers.5.self_attn.q_proj.weight"])
    # block values address the output's layers
    alpha = mc.blocks("llm", "layers", layer9=1.0)
    mc.merge(mc.weighted_sum(stacked, stacked, alpha=alpha), None)
