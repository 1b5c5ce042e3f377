"""Reading mergekit configurations without mergekit: the recipes they become, and every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mecha_core as mc
from mecha_core.cli import main

from .conftest import llama_tensors, mecha_config, read_tensors, write_llama


def convert(text: str, llamas: dict[str, Path], tmp_path: Path) -> str:
    from mecha_mergekit.convert import read_config
    return mc.serialize(read_config(mecha_config(text, llamas, tmp_path)).recipe)


def refusal(text: str, llamas: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    config = mecha_config(text, llamas, tmp_path)
    assert main(["merge", str(config), "-o", str(tmp_path / "out.safetensors")]) == 1
    assert not (tmp_path / "out.safetensors").exists()
    return capsys.readouterr().err


TIES = """
models:
  - model: @a
    parameters: {weight: 1.0, density: 0.5}
merge_method: ties
base_model: @base
"""


@pytest.mark.parametrize(("text", "expected"), [
    (TIES + "tokenizer_sorce: base\n", "unknown field 'tokenizer_sorce' in the configuration; did you mean "
                                       "'tokenizer_source'?"),
    (TIES + "tokenizer_source: union\n", "tokenizer_source 'union' is not supported yet"),
    (TIES + "chat_template: chatml\n", "field 'chat_template' (chat templates) is not supported by mecha yet"),
    (TIES.replace("ties", "tie"), "unknown merge_method 'tie'"),
    (TIES.replace("density", "densty"), "models[0].parameters: unknown parameter 'densty' for merge_method ties; "
                                        "did you mean 'density'?"),
    (TIES + "parameters: {rescale: true}\n", "parameter rescale of merge_method ties is not supported by mecha "
                                             "except at its neutral value (False)"),
    (TIES.replace("weight: 1.0, ", ""), "parameter weight is required"),
    (TIES.replace("base_model: @base\n", ""), "merge_method ties needs base_model"),
    (TIES + "dtype: float8\n", "unknown dtype 'float8'"),
    (TIES.replace("@a", "@a+lora"), "model+lora) is not supported yet"),
    ("models: [{model: @a}, {model: @b}]\nslices: []\nmerge_method: linear\n", "give exactly one of models and slices"),
    ("slices:\n  - sources:\n      - {model: @a, layer_range: [0, 9]}\nmerge_method: passthrough\n",
     "slices[0].sources[0]: model "),
    ("slices:\n  - sources:\n      - {model: @a, layer_range: [0, 2]}\n      - {model: @b, layer_range: [0, 3]}\n"
     "merge_method: linear\n", "every source of a slice must span the same number of layers"),
    ("models: [{model: @a}, {model: @b}]\nmerge_method: passthrough\n", "merge_method passthrough takes exactly 1 model, got 2"),
])
def test_refused_naming_the_field(text, expected, plugins, llamas, tmp_path, capsys):
    error = refusal(text, llamas, tmp_path, capsys)
    assert error.startswith("mecha: error: ") and error.count("\n") == 1
    assert expected in error


def test_a_gradient_becomes_block_values(plugins, llamas, tmp_path):
    """4 layers at t = 0, 1/3, 2/3, 1 of [0.2, 0.8]; keys outside the layers take t = 0."""
    recipe = mc.deserialize(convert(TIES.replace("weight: 1.0", "weight: [0.2, 0.8]"), llamas, tmp_path))
    assert recipe.method.name == "ties_merge"
    assert recipe.hypers["weight"][0] == pytest.approx({
        "generic_model_default": 0.2, "generic_model_block_model_layers_0": 0.2,
        "generic_model_block_model_layers_1": 0.4, "generic_model_block_model_layers_2": 0.6,
        "generic_model_block_model_layers_3": 0.8})
    assert recipe.hypers["density"] == (0.5,) and recipe.hypers["lambda_"] == 1.0


def test_filters_with_gradients_become_block_and_class_values(plugins, llamas, tmp_path):
    text = """
models: [{model: @base}, {model: @a}]
merge_method: slerp
base_model: @base
parameters:
  t:
    - filter: self_attn
      value: [0, 1]
    - filter: mlp
      value: [1, 0]
    - value: 0.5
"""
    recipe = convert(text, llamas, tmp_path)
    t_line = recipe.splitlines()[-2]
    assert "generic_model_class_input_layernorm=0.5" in t_line
    assert "generic_model_block_model_layers_1_class_self_attn_q_proj=0.3333333333333333" in t_line
    assert "generic_model_block_model_layers_1_class_mlp_up_proj=0.6666666666666667" in t_line
    assert recipe.splitlines()[-1] == 'merge "nuslerp" &0 &1 nuslerp_flatten=true weight=[&2, &3] ' \
                                      'nuslerp_row_wise=false'


def test_passthrough_renames_layers_and_stacks_them(plugins, llamas, tmp_path):
    text = """
slices:
  - sources: [{model: @a, layer_range: [0, 2]}]
  - sources: [{model: @b, layer_range: [1, 4]}]
merge_method: passthrough
"""
    recipe = convert(text, llamas, tmp_path)
    a, b = llamas["a"], llamas["b"]
    assert f'model "{a}" rename="model.layers.{{0..1}}.>model.layers.{{0..1}}., model.embed_tokens.weight"' in recipe
    assert (f'model "{b}" rename="model.layers.{{1..3}}.>model.layers.{{2..4}}., lm_head.weight, '
            f'model.norm.weight"') in recipe
    out = tmp_path / "stacked.safetensors"
    assert main(["merge", str(mecha_config(text, llamas, tmp_path)), "-o", str(out), "--quiet"]) == 0
    merged, first, second = (read_tensors(p) for p in (out, a / "model.safetensors", b / "model.safetensors"))
    assert len([k for k in merged if k.endswith("mlp.up_proj.weight")]) == 5
    assert torch.equal(merged["model.layers.1.mlp.up_proj.weight"], first["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(merged["model.layers.2.mlp.up_proj.weight"], second["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(merged["model.layers.4.self_attn.o_proj.weight"], second["model.layers.3.self_attn.o_proj.weight"])
    assert torch.equal(merged["model.embed_tokens.weight"], first["model.embed_tokens.weight"])
    assert torch.equal(merged["lm_head.weight"], second["lm_head.weight"])


def test_dtypes_become_merge_options(plugins, llamas, tmp_path):
    from mecha_mergekit.convert import read_config
    assert read_config(mecha_config(TIES + "dtype: bfloat16\n", llamas, tmp_path)).options == \
        {"work_dtype": "bf16", "save_dtype": "bf16"}
    assert read_config(mecha_config(TIES + "dtype: float32\nout_dtype: float16\n", llamas, tmp_path)).options == \
        {"work_dtype": "fp32", "save_dtype": "fp16"}
    assert read_config(mecha_config(TIES, llamas, tmp_path)).options == {"save_dtype": "fp32"}  # the models' own


def test_command_line_dtype_wins_over_the_config(plugins, llamas, tmp_path):
    out = tmp_path / "out.safetensors"
    config = mecha_config(TIES + "dtype: float32\n", llamas, tmp_path)
    assert main(["merge", str(config), "-o", str(out), "--quiet", "--save-dtype", "bf16"]) == 0
    assert read_tensors(out)["lm_head.weight"].dtype == torch.bfloat16


def test_mergekit_command_prints_a_recipe_that_runs_the_same(plugins, llamas, tmp_path, capsys):
    config = mecha_config(TIES + "dtype: float32\n", llamas, tmp_path)
    assert main(["mergekit", str(config)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[1] == "# from mecha.yml; run with: mecha merge RECIPE -o OUTPUT --work-dtype fp32 " \
                                   "--save-dtype fp32"
    recipe = tmp_path / "ties.mecha"
    recipe.write_text(text)
    assert main(["merge", str(recipe), "-o", str(tmp_path / "r.safetensors"), "--quiet", "--save-dtype", "fp32"]) == 0
    assert main(["merge", str(config), "-o", str(tmp_path / "c.safetensors"), "--quiet"]) == 0
    one, other = read_tensors(tmp_path / "r.safetensors"), read_tensors(tmp_path / "c.safetensors")
    assert all(torch.equal(one[k], other[k]) for k in one)


def test_dare_drops_at_the_density_and_rescales(plugins, tmp_path):
    """DARE cannot draw mergekit's numbers: its drop rate and rescale are checked instead."""
    base = llama_tensors(1, seed=0)
    folders = {"base": write_llama(tmp_path / "base", base, 1),
               "a": write_llama(tmp_path / "a", llama_tensors(1, seed=1, base=base), 1)}
    text = "models: [{model: @a, parameters: {weight: 1.0, density: 0.3}}]\nmerge_method: dare_linear\n" \
           "base_model: @base\n"
    out = tmp_path / "out.safetensors"
    assert main(["merge", str(mecha_config(text, folders, tmp_path)), "-o", str(out), "--quiet"]) == 0
    merged, tuned = read_tensors(out), read_tensors(folders["a"] / "model.safetensors")
    key = "model.layers.0.mlp.up_proj.weight"
    delta, kept = tuned[key] - base[key], merged[key] - base[key]
    share = float((kept != 0).float().mean())
    assert 0.2 < share < 0.4
    torch.testing.assert_close(kept[kept != 0], delta[kept != 0] / 0.3, rtol=1e-4, atol=1e-6)


def test_with_mecha_llm_the_recipe_names_llm_blocks_and_merges_the_same(plugins, llamas, tmp_path):
    import mecha_llm
    text = TIES.replace("weight: 1.0", "weight: [0.2, 0.8]") + "dtype: float32\n"
    generic = tmp_path / "generic.safetensors"
    assert main(["merge", str(mecha_config(text, llamas, tmp_path)), "-o", str(generic), "--quiet"]) == 0
    plugins.register(mecha_llm, "llm")
    recipe = mc.deserialize(convert(text, llamas, tmp_path))
    assert recipe.hypers["weight"][0] == pytest.approx({
        "llm_embed_default": 0.2, "llm_lm_head_default": 0.2, "llm_layers_block_layer0": 0.2,
        "llm_layers_block_layer1": 0.4, "llm_layers_block_layer2": 0.6, "llm_layers_block_layer3": 0.8})
    out = tmp_path / "llm"
    assert main(["merge", str(mecha_config(text, llamas, tmp_path)), "-o", f"{out}/", "--quiet"]) == 0
    merged, expected = read_tensors(out / "model.safetensors"), read_tensors(generic)
    assert sorted(merged) == sorted(expected) and all(torch.equal(merged[k], expected[k]) for k in merged)
