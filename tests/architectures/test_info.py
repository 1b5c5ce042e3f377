"""`mecha info ARCH`: components with blocks and classes, keys with -v, everything with --json."""

from __future__ import annotations


def test_info_lists_components_blocks_and_classes(plugins, mecha_cli):
    result = mecha_cli("info", "sd1")
    assert result.status == 0
    out = result.out
    assert 'Component "txt"' in out and 'Component "unet"' in out
    unet = out[out.index('Component "unet"'):]
    for line in ("  - in11", "  - mid", "  - out11", "  - attn2_to_k", "  - in_layers_2", "  - time_embed_0"):
        assert line + "\n" in unet
    assert "  - mlp_fc1\n" in out[:out.index('Component "unet"')]
    assert "vae: 248 keys" in out and "ema: 688 keys" in out


def test_info_verbose_lists_the_keys_of_each_block(plugins, mecha_cli):
    out = mecha_cli("info", "sdxl", "-v").out
    assert "    - model.diffusion_model.output_blocks.8.0.in_layers.2.weight\n" in out
    assert "    - conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight\n" in out


def test_info_json_describes_every_key(plugins, mecha_cli):
    data = mecha_cli("info", "sd3", "--json").json()
    assert data["architecture"] == "sd3"
    assert list(data["components"]) == ["txt", "txt2", "t5xxl", "unet"]
    assert data["components"]["unet"]["blocks"] == [f"in{i}" for i in range(24)]
    assert len(data["keys"]) == 1672
    assert data["keys"]["model.diffusion_model.joint_blocks.3.x_block.attn.qkv.weight"] == {
        "shape": [4608, 1536], "dtype": "float32", "component": "unet", "blocks": ["in3"],
        "class": "x_block_attn_qkv", "merged": True, "optional": False, "aliases": []}
    assert data["keys"]["first_stage_model.decoder.conv_in.weight"]["merged"] is False
