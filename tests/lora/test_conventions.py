"""The naming conventions of LoRA files, detected from the header: kohya, LyCORIS (``lycoris_``) and
diffusers/PEFT for SD1 and SDXL, checked against diffusers' own conversion of kohya names (skipped
without diffusers); files mixing conventions or naming layers the architecture lacks are refused."""

from __future__ import annotations

import types

import pytest
import torch

import mecha_core as mc
from mecha_core.testing import tiny_model, write_model
from mecha_lora.generation import random_lora


def bake(plugins, tmp_path, arch, lora, name):
    model = tiny_model(arch, seed=1)
    model_path = write_model(model, tmp_path / f"{arch}.safetensors")
    lora_path = write_model(lora, tmp_path / name)
    return model, mc.merge(mc.add_difference(model_path, lora_path, alpha=1.0), save_dtype=torch.float32)


def kohya_lora(plugins, arch):
    """A random kohya LoRA whose alphas equal the rank (diffusers' converters keep alphas apart)."""
    lora = random_lora(plugins.architectures.get(arch), rank=2, seed=3)
    return {name: torch.tensor(2.0) if name.endswith(".alpha") else tensor for name, tensor in lora.items()}


def diffusers_names(lora, arch, peft):
    """The LoRA renamed by diffusers: SDXL's SGM UNet names mapped to diffusers blocks, kohya's names to
    diffusers' (``unet.``/``text_encoder.``), and with `peft` on to PEFT's ``lora_A``/``lora_B``."""
    conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft
    lora = dict(lora)
    if arch == "sdxl":
        lora = conversion._maybe_map_sgm_blocks_to_diffusers(lora, types.SimpleNamespace(layers_per_block=2))
    converted, _ = conversion._convert_non_diffusers_lora_to_diffusers(lora)
    if peft:
        converted = convert_state_dict_to_peft(convert_unet_state_dict_to_peft(converted))
    return converted


@pytest.mark.parametrize("peft", [False, True], ids=["diffusers", "peft"])
@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_a_lora_renamed_by_diffusers_bakes_to_the_weights_of_the_original(plugins, tmp_path, arch, peft):
    kohya = kohya_lora(plugins, arch)
    converted = diffusers_names(kohya, arch, peft)
    assert {name.split(".")[0] for name in converted} >= {"unet", "text_encoder"}
    assert any(".lora_A." in name for name in converted) == peft
    model, expected = bake(plugins, tmp_path, arch, kohya, "kohya.safetensors")
    _, merged = bake(plugins, tmp_path, arch, converted, "diffusers.safetensors")
    changed = [key for key in model if not torch.equal(expected[key], model[key])]
    assert len(changed) > 300
    for key, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[key], rtol=1e-6, atol=1e-7, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_lycoris_names_are_the_underscored_diffusers_unet_paths(plugins, tmp_path, arch):
    lora = kohya_lora(plugins, arch)
    kohya = {name: tensor for name, tensor in lora.items() if name.startswith("lora_unet_")}
    suffixes = {".lora_A.weight": ".lora_down.weight", ".lora_B.weight": ".lora_up.weight"}
    lycoris = {}
    for name, tensor in diffusers_names(lora, arch, peft=True).items():
        if not name.startswith("unet."):
            continue
        suffix = next(s for s in suffixes if name.endswith(s))
        lycoris["lycoris_" + name.removeprefix("unet.").removesuffix(suffix).replace(".", "_") + suffixes[suffix]] = tensor
    _, expected = bake(plugins, tmp_path, arch, kohya, "kohya.safetensors")
    _, merged = bake(plugins, tmp_path, arch, lycoris, "lycoris.safetensors")
    assert all(torch.equal(merged[key], expected[key]) for key in expected)


def test_a_file_mixing_conventions_is_refused_naming_modules_of_each(plugins, tmp_path):
    lora = random_lora(plugins.architectures.get("sd1"), rank=2)
    module = "lora_unet_down_blocks_0_attentions_0_proj_in"
    renamed = {name.replace(module, "unet.down_blocks.0.attentions.0.proj_in"): tensor for name, tensor in lora.items()}
    path = write_model(renamed, tmp_path / "mixed.safetensors")
    with pytest.raises(mc.MechaError, match=r"mixed.safetensors: a LoRA whose modules are named in several conventions "
                                            r"\(kohya: lora_te_.*\(349 in all\); diffusers/PEFT: "
                                            r"unet.down_blocks.0.attentions.0.proj_in\)"):
        mc.merge(mc.model(path))


def test_a_diffusers_name_of_a_layer_the_unet_lacks_is_refused_with_the_nearest(plugins, tmp_path):
    lora = {f"unet.down_blocks.{block}.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 8) for block in (0, 9)}
    lora.update({f"unet.down_blocks.{block}.attentions.0.proj_in.lora_B.weight": torch.zeros(8, 2) for block in (0, 9)})
    path = write_model(lora, tmp_path / "odd.safetensors")
    with pytest.raises(mc.MechaError, match=r"these fit no layer of sd1: module unet.down_blocks.9.attentions.0.proj_in; "
                                            r"the nearest layer name .* is 'unet.down_blocks.\d.attentions.0.proj_in'"):
        mc.merge(mc.model(path, type="lora", arch="sd1"))


def test_inspect_names_the_naming_and_the_algorithms(plugins, mecha_cli, tmp_path):
    lora = random_lora(plugins.architectures.get("sd1"), rank=2)
    loha, lokr = "lora_te_text_model_encoder_layers_0_mlp_fc1", "lora_te_text_model_encoder_layers_1_mlp_fc1"
    rows, columns = lora[f"{loha}.lora_up.weight"].shape[0], lora[f"{loha}.lora_down.weight"].shape[1]
    for module in (loha, lokr):
        del lora[f"{module}.lora_up.weight"], lora[f"{module}.lora_down.weight"]
    lora.update({f"{loha}.hada_w1_a": torch.zeros(rows, 2), f"{loha}.hada_w1_b": torch.zeros(2, columns),
                 f"{loha}.hada_w2_a": torch.zeros(rows, 2), f"{loha}.hada_w2_b": torch.zeros(2, columns),
                 f"{lokr}.lokr_w1": torch.zeros(2, 2), f"{lokr}.lokr_w2": torch.zeros(rows // 2, columns // 2)})
    path = write_model(lora, tmp_path / "lycoris.safetensors")
    report = mecha_cli("inspect", path, "--json")
    assert report.status == 0, report.err
    assert report.json()["details"] == {"naming": "kohya", "algorithms": "LoHa x 1, LoKr x 1, LoRA x 348"}
    text = mecha_cli("inspect", path).out
    assert "naming:       kohya\n" in text and "algorithms:   LoHa x 1, LoKr x 1, LoRA x 348\n" in text
