"""The llm family: detection, the names of components, blocks and classes, tied embeddings, config.json."""

from __future__ import annotations

import json

import pytest
import torch

import mecha_core as mecha
from mecha_core.planning import detect_model
from mecha_core.tensor_files import DictTensors

from .conftest import llama_state_dict


def specialized(plugins, tensors):
    return plugins.architectures.get("llm").for_file(DictTensors(tensors))


def test_a_llama_state_dict_is_detected_as_llm(plugins):
    _, arch_name, _ = detect_model(DictTensors(llama_state_dict()), plugins)
    assert arch_name == "llm"


def test_blocks_and_classes_follow_layer_indices_and_module_paths(plugins):
    arch = specialized(plugins, llama_state_dict(layers=3))
    assert [c.name for c in arch.components] == ["embed", "layers", "lm_head"]
    assert arch.component("layers").blocks == ("layer0", "layer1", "layer2")
    assert arch.classes["layers"] == ("input_layernorm", "mlp_down_proj", "mlp_gate_proj", "mlp_up_proj",
                                      "post_attention_layernorm", "self_attn_k_proj", "self_attn_o_proj",
                                      "self_attn_q_proj", "self_attn_v_proj")
    assert arch.classes["lm_head"] == ("lm_head", "norm")
    spec = arch.key_specs["model.layers.2.mlp.up_proj.weight"]
    assert (spec.component, spec.blocks, spec.class_) == ("layers", ("layer2",), "mlp_up_proj")
    assert arch.key_specs["model.norm.weight"].component == "lm_head"
    assert {"llm_layers_block_layer2", "llm_layers_class_mlp_up_proj", "llm_embed_default",
            "llm_lm_head_class_norm"} <= set(arch.hyper_keys)


def test_expert_indices_are_not_part_of_a_class(plugins):
    tensors = llama_state_dict(layers=1)
    tensors["model.layers.0.block_sparse_moe.experts.3.w1.weight"] = torch.zeros(16, 8)
    tensors["model.layers.0.block_sparse_moe.experts.12.w1.weight"] = torch.zeros(16, 8)
    arch = specialized(plugins, tensors)
    assert arch.key_specs["model.layers.0.block_sparse_moe.experts.12.w1.weight"].class_ == "block_sparse_moe_experts_w1"


def test_tied_embeddings_have_no_lm_head_key(plugins):
    arch = specialized(plugins, llama_state_dict(tied=True))
    assert "lm_head.weight" not in arch.key_specs
    assert arch.classes["lm_head"] == ("norm",)


def test_a_file_missing_a_layer_module_is_not_taken_for_complete(plugins):
    tensors = llama_state_dict(layers=3)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    match = specialized(plugins, tensors).match(tensors)
    assert match.missing == ("model.layers.1.mlp.up_proj.weight",)


def test_the_layer_count_comes_from_config_json(plugins, tmp_path):
    tensors = llama_state_dict(layers=2)
    mecha.save_tensors(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 3}))
    with mecha.open_tensor_file(tmp_path / "model.safetensors") as file:
        arch = plugins.architectures.get("llm").for_file(file)
        match = arch.match(file.tensors)
    assert arch.component("layers").blocks == ("layer0", "layer1", "layer2")
    assert len(match.missing) == 9 and all(name.startswith("model.layers.2.") for name in match.missing)


def test_an_untied_config_expects_lm_head(plugins, tmp_path):
    mecha.save_tensors(llama_state_dict(layers=1, tied=True), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "tie_word_embeddings": False}))
    with mecha.open_tensor_file(tmp_path / "model.safetensors") as file:
        match = plugins.architectures.get("llm").for_file(file).match(file.tensors)
    assert match.missing == ("lm_head.weight",)


def test_non_llm_keys_are_not_claimed(plugins):
    assert plugins.architectures.get("llm").for_file(DictTensors({"a.weight": torch.zeros(2)})) is None


def test_block_and_class_values_reach_the_right_keys(plugins):
    a, b = llama_state_dict(seed=1), llama_state_dict(seed=2)
    alpha = mecha.blocks("llm", "layers", layer1=1.0) | mecha.classes("llm", "layers", mlp_up_proj=0.5) \
        | mecha.default("llm", "lm_head", 1.0)
    out = mecha.merge(mecha.weighted_sum(a, b, alpha=alpha, dtype="float32"), None, save_dtype="fp32")
    torch.testing.assert_close(out["model.layers.1.self_attn.q_proj.weight"], b["model.layers.1.self_attn.q_proj.weight"])
    torch.testing.assert_close(out["model.layers.0.self_attn.q_proj.weight"], a["model.layers.0.self_attn.q_proj.weight"])
    up = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(out[up], (a[up] + b[up]) / 2)
    torch.testing.assert_close(out["model.norm.weight"], b["model.norm.weight"])
    torch.testing.assert_close(out["lm_head.weight"], b["lm_head.weight"])
    torch.testing.assert_close(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"])


def test_a_misspelt_block_is_refused_when_merging(plugins):
    a, b = llama_state_dict(), llama_state_dict(seed=1)
    alpha = mecha.blocks("llm", "layers", layer7=1.0)
    with pytest.raises(mecha.MechaError, match="llm_layers_block_layer7"):
        mecha.merge(mecha.weighted_sum(a, b, alpha=alpha), None)


def test_models_of_different_layer_counts_are_refused(plugins):
    with pytest.raises(mecha.MergeError, match="different sizes"):
        mecha.merge(mecha.weighted_sum(llama_state_dict(layers=2), llama_state_dict(layers=3)), None)


@pytest.mark.parametrize(("text", "problem"), [("{not json", "cannot read the model's config"),
                                               ('{"num_hidden_layers": "two"}', r"config\.json: num_hidden_layers must be")])
def test_a_broken_config_json_is_an_error_naming_it(plugins, tmp_path, text, problem):
    mecha.save_tensors(llama_state_dict(layers=1), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(mecha.MechaError, match=problem):
        mecha.merge(mecha.weighted_sum(str(tmp_path), str(tmp_path / "model.safetensors")), None)
