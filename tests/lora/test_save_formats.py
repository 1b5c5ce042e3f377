"""Saving as a LoRA in diffusers/PEFT names (``--lora-format peft``) and as a LoKr (``--lora-algo lokr``):
the files load back in mecha, and where diffusers or LyCORIS read the format, there too."""

from __future__ import annotations

import types

import pytest
import torch

import mecha_core as mc
from mecha_core.tensor_files import SafetensorsFile
from mecha_core.testing import tiny_model, write_model
from mecha_lora.encoder import factorization
from mecha_lora.generation import random_lora


def read_all(path):
    with SafetensorsFile(path) as file:
        return {name: file.read(name).clone() for name in file.tensors}


def save(recipe, path, rank, **options):
    return mc.merge(recipe, path, save_as="lora", save_options={"rank": rank, **options}, save_dtype=torch.float32)


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "sd3"])
def test_a_peft_lora_round_trips_and_holds_only_diffusers_names(plugins, tmp_path, arch):
    architecture = plugins.architectures.get(arch)
    paths = [write_model(random_lora(architecture, rank=4, seed=seed), tmp_path / f"l{seed}.safetensors")
             for seed in (1, 2)]
    mix = mc.weighted_sum(*paths, alpha=0.25)
    peft = save(mix, tmp_path / "peft.safetensors", 8, format="peft")
    names = read_all(peft)
    prefixes = ("unet.", "text_encoder.", "text_encoder_2.", "text_encoder_3.", "transformer.")
    assert names and all(n.startswith(prefixes) and n.endswith((".lora_A.weight", ".lora_B.weight")) for n in names)
    expected = mc.merge(mix, save_dtype=torch.float32)
    reloaded = mc.merge(mc.model(peft, type="lora", arch=arch), save_dtype=torch.float32)
    assert reloaded.keys() == expected.keys()
    for key, tensor in reloaded.items():
        torch.testing.assert_close(tensor, expected[key], rtol=1e-4, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_peft_names_are_diffusers_names_for_the_kohya_file(plugins, tmp_path, arch):
    """diffusers converts mecha's kohya file to its own names: those are the names of mecha's PEFT file,
    with the same tensors."""
    conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft
    lora = write_model(random_lora(plugins.architectures.get(arch), rank=2, seed=4), tmp_path / "in.safetensors")
    kohya = read_all(save(mc.model(lora), tmp_path / "kohya.safetensors", 2))
    peft = read_all(save(mc.model(lora), tmp_path / "peft.safetensors", 2, format="peft"))
    if arch == "sdxl":
        kohya = conversion._maybe_map_sgm_blocks_to_diffusers(kohya, types.SimpleNamespace(layers_per_block=2))
    converted, alphas = conversion._convert_non_diffusers_lora_to_diffusers(kohya)
    converted = convert_state_dict_to_peft(convert_unet_state_dict_to_peft(converted))
    unet = {name: tensor for name, tensor in converted.items() if name.startswith("unet.")}
    assert unet.keys() == {name for name in peft if name.startswith("unet.")}
    assert all(torch.equal(tensor, peft[name]) for name, tensor in unet.items())
    assert set(alphas.values()) == {2.0}  # alpha = rank: the PEFT file's scale 1


def test_a_lokr_of_kronecker_deltas_is_exact_and_loads_in_lycoris(plugins, tmp_path):
    """Deltas that are Kronecker products of LyCORIS's factor shapes come back exactly; LyCORIS builds
    the same weights from the saved modules."""
    model = tiny_model("sd1", seed=1)
    root = "model.diffusion_model."
    layers = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj":
              root + "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight",
              "lora_unet_down_blocks_0_resnets_0_conv1": root + "input_blocks.1.0.in_layers.2.weight"}
    generator = torch.Generator().manual_seed(0)
    lokr = {}
    for name, key in layers.items():
        shape = model[key].shape
        (a, b), (c, d) = factorization(shape[0], 4), factorization(shape[1], 4)
        lokr[f"{name}.lokr_w1"] = torch.randn(a, c, generator=generator)
        lokr[f"{name}.lokr_w2"] = torch.randn(b, d, *shape[2:], generator=generator)
    source = mc.model(write_model(lokr, tmp_path / "lokr.safetensors"), type="lora", arch="sd1")
    out = save(source, tmp_path / "saved.safetensors", 16, algo="lokr", factor=4)
    saved = read_all(out)
    assert {n.rsplit(".", 1)[1] for n in saved} == {"lokr_w1", "lokr_w2"}  # rank 16 >= half a side: w2 whole
    expected = mc.merge(source, save_dtype=torch.float32)
    reloaded = mc.merge(mc.model(out, type="lora", arch="sd1"), save_dtype=torch.float32)
    for key, tensor in expected.items():
        torch.testing.assert_close(reloaded[key], tensor, rtol=1e-5, atol=1e-5)
    lycoris = pytest.importorskip("lycoris.modules.lokr")
    name, key = next(iter(layers.items()))
    layer = torch.nn.Linear(model[key].shape[1], model[key].shape[0], bias=False)
    with torch.no_grad():
        module = lycoris.LokrModule.make_module_from_state_dict(
            name, layer, saved[f"{name}.lokr_w1"], None, None, saved[f"{name}.lokr_w2"], None, None, None, None,
            torch.tensor(1.0), None)
        torch.testing.assert_close(module.get_weight(model[key].shape), expected[key], rtol=1e-5, atol=1e-5)


def test_a_low_rank_lokr_stores_w2_in_two_factors(plugins, tmp_path):
    lora = write_model(random_lora(plugins.architectures.get("sd1"), rank=2, seed=4), tmp_path / "in.safetensors")
    out = save(mc.model(lora), tmp_path / "lokr.safetensors", 1, algo="lokr")
    saved = read_all(out)
    name = "lora_unet_down_blocks_1_resnets_0_conv1"  # 16 x 8 x 3 x 3 in the tiny model: w1 4 x 2, w2 4 x 4 x 3 x 3
    assert [tuple(saved[f"{name}.{p}"].shape) for p in ("lokr_w1", "lokr_w2_a", "lokr_w2_b")] == [(4, 2), (4, 1), (1, 36)]
    assert saved[f"{name}.alpha"].item() == 1.0
    reloaded = mc.merge(mc.model(out, type="lora", arch="sd1"), save_dtype=torch.float32)
    assert reloaded.keys() == mc.merge(mc.model(lora), save_dtype=torch.float32).keys()


def test_the_command_line_writes_each_format_and_checks_the_options(plugins, mecha_cli, tmp_path):
    lora = write_model(random_lora(plugins.architectures.get("sd1")), tmp_path / "in.safetensors")
    recipe = tmp_path / "r.mecha"
    recipe.write_text(f'version 1\nmodel "{lora}"\n')
    for flags, part in ((["--lora-format", "peft"], ".lora_A.weight"), (["--lora-algo", "lokr", "--lora-factor", "4"],
                                                                       ".lokr_w1")):
        out = tmp_path / f"{part.strip('.')}.safetensors"
        result = mecha_cli("merge", recipe, "-o", out, "--as-lora", "4", "--quiet", *flags)
        assert result.status == 0, result.err
        assert any(name.endswith(part) for name in read_all(out))
    result = mecha_cli("merge", recipe, "-o", tmp_path / "x.safetensors", "--lora-format", "peft")
    assert result.status == 2 and "--lora-format needs --as-lora" in result.err
    for flags in (["--lora-factor", "4"], ["--lora-algo", "lora", "--lora-factor", "4"]):
        result = mecha_cli("merge", recipe, "-o", tmp_path / "x.safetensors", "--as-lora", "4", *flags)
        assert result.status == 2, result.err
        assert result.err.strip() == "mecha: error: --lora-factor needs --lora-algo lokr (it is the Kronecker factor " \
                                     "of a LoKr)"
    with pytest.raises(mc.MechaError, match="factor 4 is LoKr's, and the modules written are lora: give algo 'lokr'"):
        save(mc.model(lora), tmp_path / "x.safetensors", 4, factor=4)
    for flags, message in ((["--lora-format", "comfy"], "format 'comfy' is not one of kohya, peft"),
                           (["--lora-algo", "lokr", "--lora-factor", "0"], "factor '0' is not -1 or a positive"),
                           (["--lora-format", "peft", "--lora-algo", "lokr"], "a LoKr is written with kohya's names")):
        result = mecha_cli("merge", recipe, "-o", tmp_path / "x.safetensors", "--as-lora", "4", *flags)
        assert result.status == 1 and message in result.err, result.err
    assert not (tmp_path / "x.safetensors").exists()
