"""FLUX.1: the layout equals the real one, every packaging people share is detected and merges, and
block-wise and class-wise merges give, on every key, the value derived here from the key's name."""

from __future__ import annotations

import csv
import functools
import re

import pytest
import torch

import mecha_core as mc
from mecha_core.merge import merge_with_report
from mecha_core.planning import detect_model
from mecha_core import open_tensor_file
from mecha_core.testing import check_architecture, write_model
from mecha_flux.flux import FLUX

PREFIX = "model.diffusion_model."
GUIDANCE = re.compile(r"(^|\.)guidance_in\.")


def read_table(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["key"]: row for row in csv.DictReader(handle, delimiter="\t")}


def test_keys_shapes_dtypes_and_aliases_equal_the_reference(reference):
    table = read_table(reference / "flux-dev.tsv")
    specs = FLUX.key_specs
    assert sorted(specs) == sorted(table)
    for key, row in table.items():
        spec = specs[key]
        shape = tuple(int(d) for d in row["shape"].split(",") if d)
        aliases = tuple(a for a in row["aliases"].split(",") if a)
        # the table is FLUX.1-dev's; schnell files lack guidance_in (the table's README), so it is optional
        optional = row["optional"] == "1" or bool(GUIDANCE.search(key))
        assert (spec.shape, spec.dtype, spec.optional, spec.aliases) == (shape, row["dtype"], optional, aliases), key
        merged_as = {"clip_l": "txt", "t5xxl": "t5xxl", "diffuser": "unet"}.get(row["component"])
        assert (spec.merged, spec.component) == ((True, merged_as) if merged_as else (False, "vae")), key


def test_components_blocks_and_classes():
    check_architecture(FLUX)
    assert [c.name for c in FLUX.components] == ["txt", "t5xxl", "unet"]
    assert FLUX.component("unet").blocks == (*(f"double{i}" for i in range(19)), *(f"single{i}" for i in range(38)))
    assert FLUX.component("txt").blocks == tuple(f"in{i}" for i in range(12))
    assert {"img_attn_qkv", "txt_mlp_0", "linear1", "linear2", "modulation_lin", "img_mod_lin", "txt_attn_proj",
            "img_attn_norm_query_norm", "norm_key_norm", "guidance_in_in_layer", "vector_in_out_layer",
            "final_layer_linear", "final_layer_adaln_modulation_1"} <= set(FLUX.classes["unet"])
    specs = FLUX.key_specs
    assert specs[PREFIX + "double_blocks.7.txt_mlp.2.weight"].blocks == ("double7",)
    assert specs[PREFIX + "single_blocks.12.modulation.lin.bias"].class_ == "modulation_lin"
    for name in ("img_in.weight", "time_in.in_layer.bias", "vector_in.out_layer.weight", "guidance_in.in_layer.weight",
                 "txt_in.bias"):
        assert specs[PREFIX + name].blocks == ("double0",), name
    assert specs[PREFIX + "final_layer.linear.weight"].blocks == ("single37",)


def detect(plugins, path):
    with open_tensor_file(path) as file:
        model_type, arch, note = detect_model(file, plugins)
    return arch, note


def transformer_only(model, prefix=True):
    return {(k if prefix else k.removeprefix(PREFIX)): v for k, v in model.items() if k.startswith(PREFIX)}


def schnell(model):
    return {k: v for k, v in model.items() if not GUIDANCE.search(k)}


PACKAGINGS = {
    "all-in-one": lambda m: m,
    "transformer": transformer_only,
    "transformer-unprefixed": lambda m: transformer_only(m, prefix=False),
    "schnell-all-in-one": schnell,
    "schnell-transformer-unprefixed": lambda m: schnell(transformer_only(m, prefix=False)),
}
@functools.cache
def generated(dtype):
    """A tiny all-in-one model per dtype, made once for the detection cases (read-only)."""
    return FLUX.generate(dtype=dtype)


DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("packaging", PACKAGINGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_shared_packaging_is_detected_in_every_dtype(plugins, tmp_path, packaging, dtype):
    model = PACKAGINGS[packaging](generated(dtype))
    assert detect(plugins, write_model(model, tmp_path / "m.safetensors")) == ("flux", "")


def test_a_partial_text_encoder_is_not_a_packaging(plugins, tmp_path):
    model = FLUX.generate()
    del model["text_encoders.t5xxl.transformer.encoder.block.3.layer.1.DenseReluDense.wo.weight"]
    arch, note = detect(plugins, write_model(model, tmp_path / "m.safetensors"))
    assert arch == "generic" and note.startswith("looks like flux but 1 keys are missing")


def test_mecha_inspect_names_flux(plugins, tmp_path, mecha_cli):
    path = write_model(transformer_only(FLUX.generate(dtype=torch.float8_e4m3fn), prefix=False), tmp_path / "m.safetensors")
    report = mecha_cli("inspect", path, "--json").json()
    assert (report["architecture"], report["keys"], report["dtypes"]) == ("flux", 780, {"F8_E4M3": 780})
    assert (report["missing_keys"], report["absent_parts"]) == ([], ["t5xxl", "txt", "vae"])
    assert "without:      t5xxl, txt, vae (optional parts of flux)" in mecha_cli("inspect", path).out


def test_mecha_info_flux(plugins, mecha_cli):
    data = mecha_cli("info", "flux", "--json").json()
    assert list(data["components"]) == ["txt", "t5xxl", "unet"] and len(data["keys"]) == 1439
    assert len(data["components"]["unet"]["blocks"]) == 57


def test_fp8_transformer_with_bf16_all_in_one_keeps_the_first_models_packaging(plugins, tmp_path):
    full = FLUX.generate(seed=1, dtype=torch.bfloat16)
    alone = {k: v.to(torch.float8_e4m3fn) for k, v in transformer_only(FLUX.generate(seed=2), prefix=False).items()}
    a, b = write_model(alone, tmp_path / "a.safetensors"), write_model(full, tmp_path / "b.safetensors")
    merged, report = merge_with_report(mc.weighted_sum(a, b, alpha=0.25), None, save_dtype="bf16")
    assert sorted(merged) == sorted(alone)  # unprefixed, no text encoders or VAE
    assert "left out t5xxl (219 keys), txt (196 keys), vae (244 keys)" in report.notes[0]
    for key, value in merged.items():
        expected = alone[key].float() * 0.75 + full[PREFIX + key].float() * 0.25
        assert value.dtype == torch.bfloat16 and value.equal(expected.to(torch.bfloat16)), key
    # the all-in-one model first (or named by layout=): every part, spelled as the all-in-one file does
    for recipe, options in ((mc.weighted_sum(b, a, alpha=0.75), {}), (mc.weighted_sum(a, b, alpha=0.25), {"layout": b})):
        merged = mc.merge(recipe, None, save_dtype="bf16", **options)
        assert sorted(merged) == sorted(full)
        key = "double_blocks.3.img_attn.qkv.weight"
        assert merged[PREFIX + key].equal((alone[key].float() * 0.75 + full[PREFIX + key].float() * 0.25).bfloat16())
        vae = "vae.decoder.conv_in.weight"
        assert merged[vae].dtype == torch.bfloat16 and merged[vae].equal(full[vae])  # copied: its stored dtype


def test_an_unknown_layout_model_is_refused_with_the_recipes_models(plugins, tmp_path):
    a = write_model(FLUX.generate(seed=1), tmp_path / "a.safetensors")
    b = write_model(FLUX.generate(seed=2), tmp_path / "b.safetensors")
    with pytest.raises(mc.MechaError, match=r"unknown layout model 'c.safetensors'.*a\.safetensors"):
        mc.merge(mc.weighted_sum(a, b), None, layout="c.safetensors")


def block_of(key: str) -> str:
    """The test's own reading of the layout: the block a transformer key belongs to."""
    found = re.search(r"(double|single)_blocks\.(\d+)\.", key)
    if found:
        return f"{found.group(1)}{found.group(2)}"
    return "single37" if ".final_layer." in key else "double0"


def test_block_wise_and_class_wise_merges_give_the_expected_value_on_every_key(plugins, tmp_path):
    a, b = FLUX.generate(seed=1), FLUX.generate(seed=2)
    pa, pb = write_model(a, tmp_path / "a.safetensors"), write_model(b, tmp_path / "b.safetensors")
    values = [round(i / 56, 4) for i in range(57)]
    by_block = dict(zip([*(f"double{i}" for i in range(19)), *(f"single{i}" for i in range(38))], values))
    alpha = {**mc.blocks("flux", "unet", *values), **mc.classes("flux", "unet", linear1=0.9, txt_mlp_0=0.05),
             **mc.default("flux", "txt", 0.3), **mc.default("flux", "t5xxl", 0.6)}
    merged = mc.merge(mc.weighted_sum(pa, pb, alpha=alpha), None, save_dtype="fp32")
    assert sorted(merged) == sorted(a)
    for key, value in merged.items():
        if key.startswith("vae."):
            expected = a[key]
        else:
            if ".linear1." in key:
                weight = 0.9
            elif ".txt_mlp.0." in key:
                weight = 0.05
            elif key.startswith(PREFIX):
                weight = by_block[block_of(key)]
            else:
                weight = 0.3 if key.startswith("text_encoders.clip_l.") else 0.6
            expected = a[key] * (1 - weight) + b[key] * weight
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6, msg=key)
