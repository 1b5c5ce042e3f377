"""LoRA names derived from each architecture's structure: the SD1 reference table, SGM names for SDXL,
OpenCLIP's q/k/v, and the diffusers names of SD3's MMDiT."""

from __future__ import annotations

import pytest

from mecha_lora.naming import Target, lora_names


def test_the_sd1_unet_names_are_the_reference_table(plugins, reference):
    rows = [line.split("\t") for line in (reference / "sd1-ldm-to-kohya-lora.tsv").read_text().splitlines()[1:]]
    table = dict(rows)
    names = lora_names(plugins.architectures.get("sd1"))
    assert {key: names.kohya[key] for key in table} == {key: (prefix,) for key, prefix in table.items()}
    trained_unet = {key for key in names.trained if key.startswith("model.diffusion_model.")}
    assert trained_unet == table.keys()


def test_sd1_names_outside_kohyas_default_layers(plugins):
    names = lora_names(plugins.architectures.get("sd1"))
    unet = "model.diffusion_model."
    assert names.kohya[unet + "input_blocks.0.0.weight"] == ("lora_unet_conv_in",)
    assert names.kohya[unet + "time_embed.2.weight"] == ("lora_unet_time_embedding_linear_2",)
    assert names.kohya[unet + "out.2.weight"] == ("lora_unet_conv_out",)
    text = "cond_stage_model.transformer.text_model.encoder.layers.3.self_attn.q_proj.weight"
    assert names.kohya[text] == ("lora_te_text_model_encoder_layers_3_self_attn_q_proj",)
    assert names.targets["text_encoder.text_model.encoder.layers.3.self_attn.q_proj"] == Target(text)
    assert names.targets["lora_unet_input_blocks_1_1_proj_in"].key == unet + "input_blocks.1.1.proj_in.weight"
    for layer in ("text_model.embeddings.token_embedding.weight", "text_model.final_layer_norm.weight"):
        assert "cond_stage_model.transformer." + layer not in names.kohya


def test_sdxl_uses_sgm_names_and_splits_openclips_fused_projection(plugins):
    names = lora_names(plugins.architectures.get("sdxl"))
    unet = "model.diffusion_model."
    attention = unet + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    assert names.kohya[attention] == ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",)
    assert names.targets["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"] == Target(attention)
    assert names.targets["lora_unet_up_blocks_0_upsamplers_0_conv"].key == unet + "output_blocks.2.2.conv.weight"
    assert names.kohya[unet + "label_emb.0.0.weight"] == ("lora_unet_label_emb_0_0",)
    fused = "conditioner.embedders.1.model.transformer.resblocks.7.attn.in_proj_weight"
    layer = "lora_te2_text_model_encoder_layers_7_"
    assert names.kohya[fused] == tuple(f"{layer}self_attn_{p}_proj" for p in "qkv")
    assert names.targets[layer + "self_attn_k_proj"] == Target(fused, 1280, 1280)
    assert names.targets[layer + "mlp_fc1"].key == "conditioner.embedders.1.model.transformer.resblocks.7.mlp.c_fc.weight"
    clip_l = "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc2.weight"
    assert names.kohya[clip_l] == ("lora_te1_text_model_encoder_layers_0_mlp_fc2",)
    assert names.targets["text_encoder_2.text_model.encoder.layers.7.self_attn.v_proj"] == Target(fused, 2560, 1280)


def test_sd3_reads_kohya_and_diffusers_names(plugins):
    names = lora_names(plugins.architectures.get("sd3"))
    root = "model.diffusion_model."
    qkv = root + "joint_blocks.5.x_block.attn.qkv.weight"
    assert names.kohya[qkv] == ("lora_unet_joint_blocks_5_x_block_attn_qkv",)
    for prefix in ("transformer.transformer_blocks.5.attn.", "base_model.model.transformer_blocks.5.attn."):
        expected = [Target(qkv, i * 1536, 1536) for i in range(3)]
        assert [names.targets[prefix + p] for p in ("to_q", "to_k", "to_v")] == expected
    context = root + "joint_blocks.5.context_block.attn.qkv.weight"
    assert names.targets["lora_transformer_transformer_blocks_5_attn_add_v_proj"] == Target(context, 3072, 1536)
    assert names.targets["transformer.transformer_blocks.5.attn.to_add_out"].key == \
        root + "joint_blocks.5.context_block.attn.proj.weight"
    last = root + "joint_blocks.23.context_block.adaLN_modulation.1.weight"
    assert names.targets["transformer.transformer_blocks.23.norm1_context.linear"] == Target(last, swap=True)
    assert not names.targets["transformer.transformer_blocks.22.norm1_context.linear"].swap
    assert names.targets["transformer.norm_out.linear"].swap
    t5 = "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"
    assert names.kohya[t5] == ("lora_te3_encoder_block_0_layer_0_SelfAttention_q",)
    assert "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" \
        not in names.kohya
    assert root + "pos_embed" not in names.kohya
    assert all(key.startswith(root + "joint_blocks.") for key in names.trained if key.startswith(root))


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "sd3"])
def test_every_written_name_is_read_back_to_its_key(plugins, arch):
    names = lora_names(plugins.architectures.get(arch))
    architecture = plugins.architectures.get(arch)
    for key, modules in names.kohya.items():
        rows = architecture.key_specs[key].shape[0] // len(modules)
        expected = [Target(key)] if len(modules) == 1 else [Target(key, i * rows, rows) for i in range(len(modules))]
        assert [names.targets[m] for m in modules] == expected
    assert set(names.trained) <= names.kohya.keys()
