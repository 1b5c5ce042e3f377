"""Merged checkpoints carry Stability's model spec (from the architecture's names); saved LoRAs carry
kohya's base-model keys beside ``ss_network_*``."""

from __future__ import annotations

import datetime

import mecha_core as mc
from mecha_core.testing import tiny_model, write_model

from .conftest import metadata


def test_a_merged_sd1_checkpoint_carries_the_model_spec(models, tmp_path):
    out = mc.merge(mc.weighted_sum("ghost", "dream"), tmp_path / "my merge.safetensors",
                   models_dir=models / "Stable-diffusion")
    meta = metadata(out)
    assert {k: v for k, v in meta.items() if k.startswith("modelspec.")} == {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.resolution": "512x512",
        "modelspec.title": "my merge",
        "modelspec.date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "modelspec.merged_from": "ghost, dream",
    }
    assert "mecha_recipe" in meta


def test_the_title_is_a_save_option(models, tmp_path):
    out = mc.merge(mc.weighted_sum("ghost", "dream"), tmp_path / "x.safetensors", models_dir=models / "Stable-diffusion",
                   save_options={"title": "Ghost Dream 0.5"})
    assert metadata(out)["modelspec.title"] == "Ghost Dream 0.5"


def test_sdxl_names_come_from_its_plugin(plugins, tmp_path):
    a = write_model(tiny_model("sdxl", seed=1), tmp_path / "a.safetensors")
    b = write_model(tiny_model("sdxl", seed=2), tmp_path / "b.safetensors")
    meta = metadata(mc.merge(mc.weighted_sum(a, b), tmp_path / "xl.safetensors"))
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert meta["modelspec.resolution"] == "1024x1024"


def test_an_architecture_without_model_spec_names_gets_no_partial_spec(plugins, tmp_path):
    import torch
    a = write_model({"layers.0.weight": torch.ones(2, 2)}, tmp_path / "a.safetensors")
    meta = metadata(mc.merge(mc.weighted_sum(a, a), tmp_path / "generic.safetensors"))
    assert not any(k.startswith("modelspec.") for k in meta)


def test_a_saved_lora_carries_kohya_s_base_model_keys(models, tmp_path):
    out = mc.merge(mc.subtract("ghost", "dream"), tmp_path / "ghost-minus-dream.safetensors",
                   models_dir=models / "Stable-diffusion", save_as="lora", save_options={"rank": 2})
    meta = metadata(out)
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_v2"] == "False"
    assert meta["ss_output_name"] == "ghost-minus-dream"
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "2"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.title"] == "ghost-minus-dream"
