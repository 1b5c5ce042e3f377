"""Detection from the header, `mecha inspect`, and the errors for LoRAs that do not fit."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.planning import detect_model
from mecha_core import open_tensor_file
from mecha_core.testing import tiny_model, write_model
from mecha_lora.generation import random_lora, write_random_lora


def detect(plugins, path):
    with open_tensor_file(path) as file:
        model_type, arch, _ = detect_model(file, plugins)
    return model_type.name, arch


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "sd3"])
def test_a_lora_is_detected_with_its_architecture_and_inspected(plugins, mecha_cli, tmp_path, arch):
    path = write_model(random_lora(plugins.architectures.get(arch), dtype=torch.float16), tmp_path / "l.safetensors")
    assert detect(plugins, path) == ("lora", arch)
    assert detect(plugins, write_model(tiny_model(arch), tmp_path / "m.safetensors")) == ("base", arch)
    result = mecha_cli("inspect", path, "--json")
    assert result.status == 0, result.err
    report = result.json()
    assert (report["model_type"], report["architecture"], report["merge_space"]) == ("lora", arch, "delta")
    assert report["targets"] == len(mc.merge(mc.model(path)))


def test_a_real_size_lora_is_detected_from_its_header(plugins, tmp_path):
    path = write_random_lora(tmp_path / "sd1.safetensors", plugins.architectures.get("sd1"), rank=1)
    assert detect(plugins, path) == ("lora", "sd1")


def test_a_lora_of_another_architecture_is_refused_before_merging(plugins, tmp_path):
    model = write_model(tiny_model("sd1"), tmp_path / "sd1-model.safetensors")
    lora = write_model(random_lora(plugins.architectures.get("sdxl")), tmp_path / "sdxl-lora.safetensors")
    with pytest.raises(mc.MergeError) as error:
        mc.merge(mc.add_difference(model, lora))
    message = str(error.value)
    assert "different architectures" in message
    assert f"{model} is sd1" in message and f"{lora} is a lora for sdxl" in message


def test_a_lora_forced_onto_another_architecture_names_what_does_not_fit(plugins, tmp_path):
    lora = write_model(random_lora(plugins.architectures.get("sdxl")), tmp_path / "sdxl-lora.safetensors")
    model = write_model(tiny_model("sd1"), tmp_path / "sd1-model.safetensors")
    with pytest.raises(mc.MechaError, match=r"a LoRA for sd1 \(\d+ of 1052 modules placed\), but these fit no layer "
                                            r"of sd1: module lora_te1_text_model_encoder_layers_0_mlp_fc1, .*"
                                            r"nearest layer name .* is 'lora_te_text_model_encoder_layers_0_mlp_fc1'"):
        mc.merge(mc.add_difference(model, mc.model(lora, type="lora", arch="sd1")))


def test_tensors_that_fit_no_layer_are_listed(plugins, tmp_path):
    lora = random_lora(plugins.architectures.get("sd1"), rank=2)
    typo = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_qq"
    lora[f"{typo}.lora_down.weight"], lora[f"{typo}.lora_up.weight"] = torch.zeros(2, 8), torch.zeros(8, 2)
    lora["lora_te_text_model_encoder_layers_0_mlp_fc1.oft_blocks"] = torch.ones(1, 8)
    path = write_model(lora, tmp_path / "odd.safetensors")
    with pytest.raises(mc.MechaError) as error:
        detect(plugins, path)
    message = str(error.value)
    assert message.startswith(f"{path}: a LoRA for sd1 (350 of 351 modules placed), but these fit no layer of sd1: ")
    assert f"module {typo}" in message and "tensor lora_te_text_model_encoder_layers_0_mlp_fc1.oft_blocks" in message
    assert f"nearest layer name to {typo!r} is '{typo[:-1]}'" in message and "unsupported: OFT" in message


def test_a_lora_of_no_known_architecture_is_an_error(plugins, tmp_path):
    path = write_model({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 8),
                        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(24, 2)},
                       tmp_path / "flux.safetensors")
    with pytest.raises(mc.MechaError, match="looks like a LoRA, but none of its 1 modules is a layer of a known "
                                            r"architecture \(sd1, sd3, sdxl\); first: lora_unet_double_blocks_0"):
        detect(plugins, path)


@pytest.mark.parametrize("change, problem", [
    (lambda l, m: l.pop(f"{m}.lora_up.weight"), "has no lora_up"),
    (lambda l, m: l.update({f"{m}.lora_up.weight": torch.zeros(8, 3)}), "disagree on the rank"),
    (lambda l, m: l.update({f"{m}.alpha": torch.ones(2)}), "alpha has shape [2], expected one number"),
    (lambda l, m: l.update({f"{m}.lora_down.weight": torch.zeros(4, 8, dtype=torch.int8)}), "expected floating point"),
])
def test_a_broken_module_is_refused_by_name(plugins, tmp_path, change, problem):
    lora = random_lora(plugins.architectures.get("sd1"), rank=4)
    module = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    change(lora, module)
    path = write_model(lora, tmp_path / "broken.safetensors")
    model = write_model(tiny_model("sd1"), tmp_path / "model.safetensors")
    with pytest.raises(mc.MechaError) as error:
        mc.merge(mc.add_difference(model, path))
    assert f"{path}: LoRA module {module!r}" in str(error.value) and problem in str(error.value)


def test_an_oft_is_refused_as_unsupported(plugins, tmp_path):
    module = "lora_unet_down_blocks_0_attentions_0_proj_in"
    path = write_model({f"{module}.oft_blocks": torch.zeros(2, 4, 4), f"{module}.alpha": torch.tensor(2.0)},
                       tmp_path / "oft.safetensors")
    with pytest.raises(mc.MechaError, match=r"these fit no layer of sd1: tensor .*oft_blocks .*unsupported: OFT, BOFT, "
                                            r"GLoRA and IA3 layers"):
        detect(plugins, path)
