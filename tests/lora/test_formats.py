"""Files written by other trainers: diffusers/PEFT SD3 LoRAs (split q/k/v, swapped modulation halves, no
alpha), diffusers-named SDXL LoRAs, and a linear LoRA of a 1x1 convolution."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.testing import tiny_model, write_model

ROOT = "model.diffusion_model."


def factors(rows, columns, rank=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rank, columns, generator=generator), torch.randn(rows, rank, generator=generator)


def bake(model, lora, tmp_path):
    model_path = write_model(model, tmp_path / "model.safetensors")
    lora_path = write_model(lora, tmp_path / "lora.safetensors")
    return mc.merge(mc.add_difference(model_path, lora_path, alpha=1.0), save_dtype=torch.float32)


PEFT = ("transformer.{}", ".lora_A.weight", ".lora_B.weight", lambda n: n)
ONETRAINER = ("lora_transformer_{}", ".lora_down.weight", ".lora_up.weight", lambda n: n.replace(".", "_"))


@pytest.mark.parametrize("style", [PEFT, ONETRAINER], ids=["peft", "onetrainer"])
def test_a_diffusers_named_sd3_lora_lands_on_the_reference_layout(plugins, tmp_path, style):
    template, down_suffix, up_suffix, spell = style
    model = tiny_model("sd3", seed=1)
    hidden = model[ROOT + "joint_blocks.0.x_block.attn.qkv.weight"].shape[1]
    # diffusers layer -> (checkpoint key, the rows it changes, whether its two row halves come swapped)
    layers = {
        "transformer_blocks.0.attn.to_k": ("joint_blocks.0.x_block.attn.qkv.weight", slice(hidden, 2 * hidden), False),
        "transformer_blocks.3.attn.add_v_proj": ("joint_blocks.3.context_block.attn.qkv.weight",
                                                 slice(2 * hidden, 3 * hidden), False),
        "transformer_blocks.3.ff_context.net.2": ("joint_blocks.3.context_block.mlp.fc2.weight", slice(None), False),
        "transformer_blocks.23.norm1_context.linear": ("joint_blocks.23.context_block.adaLN_modulation.1.weight",
                                                       slice(None), True),
        "norm_out.linear": ("final_layer.adaLN_modulation.1.weight", slice(None), True),
        "time_text_embed.text_embedder.linear_1": ("y_embedder.mlp.0.weight", slice(None), False),
    }
    lora, expected = {}, {}
    for seed, (layer, (key, rows, swap)) in enumerate(layers.items()):
        weight = model[ROOT + key]
        down, up = factors(weight[rows].shape[0], weight.shape[1], seed=seed)
        name = template.format(spell(layer))
        lora[name + down_suffix], lora[name + up_suffix] = down, up
        delta = torch.zeros_like(weight)
        delta[rows] = up @ down  # no alpha: scale 1
        if swap:  # diffusers' (scale, shift) halves are the reference's (shift, scale)
            half = len(delta) // 2
            delta = torch.cat([delta[half:], delta[:half]])
        expected[ROOT + key] = delta
    merged = bake(model, lora, tmp_path)
    for key, tensor in merged.items():
        torch.testing.assert_close(tensor, model[key] + expected.get(key, 0), msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("layers", [
    {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k":  # kohya, diffusers UNet names
     ROOT + "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"},
    {"unet.up_blocks.0.resnets.2.conv_shortcut": ROOT + "output_blocks.2.0.skip_connection.weight",  # PEFT
     "text_encoder_2.text_model.encoder.layers.5.mlp.fc2":
         "conditioner.embedders.1.model.transformer.resblocks.5.mlp.c_proj.weight"},
], ids=["kohya-diffusers-unet", "peft"])
def test_sdxl_loras_with_diffusers_unet_names_and_peft_text_encoders(plugins, tmp_path, layers):
    model = tiny_model("sdxl", seed=1)
    lora, expected = {}, {}
    for seed, (name, key) in enumerate(layers.items()):
        weight = model[key]
        down, up = factors(weight.shape[0], weight[0].numel(), seed=seed)
        if weight.dim() == 4:
            down, up = down.reshape(2, *weight.shape[1:]), up.reshape(*up.shape, 1, 1)
        lora[f"{name}.lora_A.weight"], lora[f"{name}.lora_B.weight"] = down, up
        lora[f"{name}.alpha"] = torch.tensor(1.0)
        expected[key] = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) / 2
    model_path = write_model(model, tmp_path / "model.safetensors")
    lora_path = mc.model(write_model(lora, tmp_path / "lora.safetensors"), type="lora", arch="sdxl")
    merged = mc.merge(mc.add_difference(model_path, lora_path, alpha=1.0), save_dtype=torch.float32)
    for key, tensor in merged.items():
        torch.testing.assert_close(tensor, model[key] + expected.get(key, 0), msg=lambda m, key=key: f"{key}: {m}")


def test_a_linear_lora_of_a_1x1_convolution_takes_the_convolutions_shape(plugins, tmp_path):
    model = tiny_model("sd1", seed=1)
    key = ROOT + "input_blocks.1.1.proj_in.weight"
    channels = model[key].shape[0]
    down, up = factors(channels, channels)
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    merged = bake(model, {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                          f"{name}.alpha": torch.tensor(4.0)}, tmp_path)
    torch.testing.assert_close(merged[key], model[key] + (2 * up @ down).reshape(channels, channels, 1, 1))
