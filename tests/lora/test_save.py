"""Saving delta-space results as kohya LoRAs (truncated SVD) and reading them back."""

from __future__ import annotations

import math

import pytest
import torch

import mecha_core as mc
from mecha_core.tensor_files import SafetensorsFile
from mecha_core.testing import tiny_model, write_model
from mecha_lora.generation import random_lora
from mecha_lora.naming import lora_names

from .oracle import kohya_targets


def low_rank(shape, rank, seed):
    generator = torch.Generator().manual_seed(seed)
    rows, columns = shape[0], math.prod(shape[1:])
    return (torch.randn(rows, rank, generator=generator) @ torch.randn(rank, columns, generator=generator)
            / math.sqrt(columns)).reshape(shape)


def saved(recipe, path, rank, **options):
    return mc.merge(recipe, path, save_as="lora", save_options={"rank": rank}, **options)


def relative_error(approximation, exact):
    return ((approximation.double() - exact.double()).norm() / exact.double().norm()).item()


@pytest.mark.parametrize("save_dtype, bound", [(torch.float32, 1e-5), (torch.float16, 3e-3)], ids=["fp32", "fp16"])
def test_an_extracted_lora_reproduces_a_known_low_rank_delta(plugins, tmp_path, save_dtype, bound):
    base = tiny_model("sd1", seed=1)
    expressible = lora_names(plugins.architectures.get("sd1")).kohya
    deltas = {key: low_rank(base[key].shape, min(2, *base[key].shape[:2]), seed) for seed, key in enumerate(expressible)}
    finetune = {key: tensor + deltas.get(key, 0) for key, tensor in base.items()}
    base_path = write_model(base, tmp_path / "base.safetensors")
    finetune_path = write_model(finetune, tmp_path / "finetune.safetensors")
    lora_path = saved(mc.subtract(finetune_path, base_path), tmp_path / "extracted.safetensors", 2,
                      save_dtype=save_dtype)
    reloaded = mc.merge(mc.model(lora_path), save_dtype=torch.float32)
    assert reloaded.keys() == deltas.keys()
    errors = {key: relative_error(reloaded[key], delta) for key, delta in deltas.items()}
    worst = max(errors, key=errors.get)
    print(f"\nrank-2 deltas saved as a rank-2 LoRA in {save_dtype}: worst relative error {errors[worst]:.2e} ({worst})")
    assert errors[worst] < bound
    baked = mc.merge(mc.add_difference(base_path, lora_path, alpha=1.0), save_dtype=torch.float32)
    for key in deltas:
        torch.testing.assert_close(baked[key], finetune[key], rtol=bound, atol=bound)


def test_a_truncated_lora_loses_exactly_the_smaller_singular_values(plugins, tmp_path):
    base = tiny_model("sd1", seed=1)
    key = "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight"
    delta = low_rank(base[key].shape, 6, seed=3)
    finetune = {**base, key: base[key] + delta}
    lora_path = saved(mc.subtract(finetune, base), tmp_path / "rank3.safetensors", 3, save_dtype=torch.float32)
    reloaded = mc.merge(mc.model(lora_path), save_dtype=torch.float32)[key]
    singular = torch.linalg.svdvals(delta.double())
    optimum = (singular[3:].square().sum().sqrt() / singular.square().sum().sqrt()).item()  # Eckart-Young
    print(f"\nrank-6 delta saved at rank 3: relative error {relative_error(reloaded, delta):.4f}, optimum {optimum:.4f}")
    assert relative_error(reloaded, delta) == pytest.approx(optimum, rel=1e-4)


@pytest.mark.parametrize("arch", ["sdxl", "sd3"])
def test_a_mix_of_two_rank_4_loras_round_trips_at_rank_8(plugins, tmp_path, arch):
    architecture = plugins.architectures.get(arch)
    paths = [write_model(random_lora(architecture, rank=4, seed=seed), tmp_path / f"l{seed}.safetensors")
             for seed in (1, 2)]
    mix = mc.weighted_sum(*paths, alpha=0.25)
    lora_path = saved(mix, tmp_path / "mix.safetensors", 8, save_dtype=torch.float32)
    expected = mc.merge(mix, save_dtype=torch.float32)
    reloaded = mc.merge(mc.model(lora_path), save_dtype=torch.float32)
    assert reloaded.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(reloaded[key], tensor, rtol=1e-4, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")


def test_the_saved_file_is_a_kohya_lora(plugins, tmp_path):
    base = tiny_model("sdxl", seed=1)
    lora = random_lora(plugins.architectures.get("sdxl"), rank=4, seed=2)
    lora_path = saved(mc.model(write_model(lora, tmp_path / "in.safetensors")), tmp_path / "out.safetensors", 3)
    with SafetensorsFile(lora_path) as file:
        header, metadata = file.tensors, file.metadata
        alpha = file.read("lora_unet_input_blocks_1_0_in_layers_2.alpha").clone()  # no view outlives the file
    assert {name.split(".")[0] for name in header} == {name.split(".")[0] for name in lora}
    assert set(kohya_targets("sdxl", base)) >= {name.split(".")[0] for name in header}
    conv = "lora_unet_input_blocks_1_0_in_layers_2"  # a 3x3 convolution: a LoCon module
    channels = base["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"].shape[0]
    assert header[f"{conv}.lora_down.weight"].shape == (3, channels, 3, 3)
    assert header[f"{conv}.lora_up.weight"].shape == (channels, 3, 1, 1)
    assert header[f"{conv}.lora_down.weight"].dtype == "F16" and alpha.dtype == torch.float32 and alpha.item() == 3
    q = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    width = base["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"].shape[1]
    assert header[f"{q}.lora_up.weight"].shape == (width, 3)
    assert (metadata["ss_network_module"], metadata["ss_network_dim"], metadata["ss_network_alpha"]) == \
        ("networks.lora", "3", "3")
    assert "mecha_recipe" in metadata


def test_layers_a_lora_cannot_express_are_left_out(plugins):
    encoder = plugins.model_types.get("lora").encoder(plugins.architectures.get("sd1"), {"rank": 4})
    unet, text = "model.diffusion_model.", "cond_stage_model.transformer.text_model."
    for key, shape in ((unet + "input_blocks.1.0.in_layers.2.bias", (8,)), (unet + "out.0.weight", (8,)),
                       (text + "embeddings.token_embedding.weight", (64, 8)),
                       (text + "encoder.layers.0.layer_norm1.weight", (8,))):
        assert encoder.layout(key, shape) == [], key
    assert [shape for _, shape, _ in encoder.layout(unet + "time_embed.0.weight", (32, 8))] == [(4, 8), (32, 4), ()]


def test_the_command_line_saves_a_lora_and_checks_the_rank(plugins, mecha_cli, tmp_path):
    lora = write_model(random_lora(plugins.architectures.get("sd1")), tmp_path / "in.safetensors")
    recipe = tmp_path / "scaled.mecha"
    recipe.write_text(f'version 1\nmodel "{lora}"\nmodel "{lora}"\nmerge "weighted_sum" &0 &1 alpha=0.5\n')
    out = tmp_path / "out.safetensors"
    result = mecha_cli("merge", recipe, "-o", out, "--as-lora", "4", "--quiet")
    assert result.status == 0, result.err
    assert mecha_cli("inspect", out, "--json").json()["model_type"] == "lora"
    for bad in ("0", "four"):
        result = mecha_cli("merge", recipe, "-o", tmp_path / "bad.safetensors", "--as-lora", bad)
        assert result.status == 1
        assert f"saving as a LoRA needs a rank, a positive whole number (--as-lora 32, or save_options={{'rank': 32}}); " \
               f"got '{bad}'" in result.err
        assert len(result.err.strip().splitlines()) == 1


def test_a_weight_space_recipe_cannot_be_saved_as_a_lora(plugins, tmp_path):
    model = write_model(tiny_model("sd1"), tmp_path / "model.safetensors")
    with pytest.raises(mc.MechaError, match=r"saving as lora needs a recipe in delta space \(subtract\(finetune, "
                                            r"base\) gives one\)"):
        saved(mc.model(model), tmp_path / "out.safetensors", 4)


def test_a_delta_holding_nan_is_refused_by_key_and_nothing_is_written(plugins, tmp_path):
    base = tiny_model("sd1", seed=1)
    key = "model.diffusion_model.input_blocks.1.1.proj_out.weight"
    broken = {**base, key: base[key].clone().fill_(float("nan"))}
    out = tmp_path / "out.safetensors"
    with pytest.raises(mc.MechaError, match=f"key '{key}': cannot save as a LoRA, the SVD of its delta failed"):
        saved(mc.subtract(broken, base), out, 4)
    assert list(tmp_path.iterdir()) == []
