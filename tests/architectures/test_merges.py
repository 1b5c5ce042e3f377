"""Block-wise and class-wise merges give, on every key, the value the test derives from the key's name."""

from __future__ import annotations

import re

import pytest
import torch

import mecha_core as mc
from mecha_core.tensor_files import SafetensorsFile
from mecha_core.testing import tiny_model, write_model

UNET = "model.diffusion_model."
# The test's own reading of the layouts: (component, block) from a key's name.
SD1_RULES = [
    (r"^cond_stage_model\.transformer\.text_model\.encoder\.layers\.(\d+)\.", "txt", "in{}"),
    (r"^cond_stage_model\.transformer\.text_model\.embeddings\.(?!position_ids)", "txt", "in0"),
    (r"^cond_stage_model\.transformer\.text_model\.final_layer_norm\.", "txt", "in11"),
    (r"^model\.diffusion_model\.input_blocks\.(\d+)\.", "unet", "in{}"),
    (r"^model\.diffusion_model\.middle_block\.", "unet", "mid"),
    (r"^model\.diffusion_model\.output_blocks\.(\d+)\.", "unet", "out{}"),
    (r"^model\.diffusion_model\.out\.", "unet", "out11"),
]
SDXL_RULES = [
    (r"^conditioner\.embedders\.0\.transformer\.text_model\.encoder\.layers\.(\d+)\.", "txt", "in{}"),
    (r"^conditioner\.embedders\.0\.transformer\.text_model\.embeddings\.(?!position_ids)", "txt", "in0"),
    (r"^conditioner\.embedders\.0\.transformer\.text_model\.final_layer_norm\.", "txt", "in11"),
    (r"^conditioner\.embedders\.1\.model\.transformer\.resblocks\.(\d+)\.", "txt2", "in{}"),
    (r"^conditioner\.embedders\.1\.model\.(token_embedding|positional_embedding)", "txt2", "in0"),
    (r"^conditioner\.embedders\.1\.model\.(ln_final|text_projection|logit_scale)", "txt2", "in31"),
    (r"^model\.diffusion_model\.input_blocks\.(\d+)\.", "unet", "in{}"),
    (r"^model\.diffusion_model\.middle_block\.", "unet", "mid"),
    (r"^model\.diffusion_model\.output_blocks\.(\d+)\.", "unet", "out{}"),
    (r"^model\.diffusion_model\.out\.", "unet", "out8"),
]
SHARED = re.compile(r"^model\.diffusion_model\.(time_embed|label_emb)\.")
CLASS_RULES = {  # class value given in the test -> the keys it covers
    ("unet", "attn2_to_k"): re.compile(r"\.attn2\.to_k\.weight$"),
    ("unet", "in_layers_2"): re.compile(r"\.in_layers\.2\.(weight|bias)$"),
    ("txt", "mlp_fc1"): re.compile(r"\.mlp\.fc1\.(weight|bias)$"),
}


def locate(key: str, rules) -> tuple[str, str] | None:
    for pattern, component, block in rules:
        match = re.search(pattern, key)
        if match:
            return component, block.format(*match.groups()) if "{}" in block else block
    return None


def expected_alphas(keys, rules, values):
    """Per merged key, the alpha the merge must use: class value, else mean of block values, else default."""
    time_blocks = sorted({locate(k, rules)[1] for k in keys if ".emb_layers." in k})  # blocks of residual blocks
    alphas = {}
    for key in keys:
        if SHARED.search(key):
            component, blocks = "unet", time_blocks
        else:
            found = locate(key, rules)
            if found is None:
                continue
            component, blocks = found[0], [found[1]]
        for (class_component, class_name), pattern in CLASS_RULES.items():
            if class_component == component and pattern.search(key) and (component, class_name) in values["class"]:
                alphas[key] = values["class"][(component, class_name)]
                break
        else:
            given = [values["block"][(component, b)] for b in blocks if (component, b) in values["block"]]
            alphas[key] = sum(given) / len(given) if given else values["default"].get(component, 0)
    return alphas


def hyper_dict(arch: str, values) -> dict:
    alpha: dict = {}
    for component, value in values["default"].items():
        alpha |= mc.default(arch, component, value)
    for (component, block), value in values["block"].items():
        alpha |= mc.blocks(arch, component, **{block: value})
    for (component, class_name), value in values["class"].items():
        alpha |= mc.classes(arch, component, **{class_name: value})
    return alpha


@pytest.mark.parametrize("arch, rules", [("sd1", SD1_RULES), ("sdxl", SDXL_RULES)])
def test_block_and_class_values_reach_every_key(plugins, tmp_path, arch, rules):
    architecture = plugins.architectures.get(arch)
    a, b = tiny_model(arch, seed=1), tiny_model(arch, seed=2)
    blocks = {c.name: c.blocks for c in architecture.components}
    values = {
        "default": {"txt": 0.2, "unet": 0.1},
        # a distinct value for every block of the UNet and one text block in two
        "block": {**{("unet", name): (i + 1) / 32 for i, name in enumerate(blocks["unet"])},
                  **{("txt", name): 0.5 + i / 40 for i, name in enumerate(blocks["txt"]) if i % 2 == 0}},
        "class": {("unet", "attn2_to_k"): 1.0, ("unet", "in_layers_2"): 0.0, ("txt", "mlp_fc1"): 0.75},
    }
    if "txt2" in blocks:
        values["block"] |= {("txt2", "in0"): 0.9, ("txt2", "in31"): 0.3, ("txt2", "in7"): 0.6}
    alphas = expected_alphas(a, rules, values)
    paths = write_model(a, tmp_path / "a.safetensors"), write_model(b, tmp_path / "b.safetensors")
    merged = mc.merge(mc.weighted_sum(*paths, alpha=hyper_dict(arch, values)), save_dtype="fp32")
    assert set(merged) == set(a)
    assert len(alphas) == sum(spec.merged for name, spec in architecture.key_specs.items() if name in a)
    for key, tensor in merged.items():
        if key in alphas:
            expected = a[key].double() + alphas[key] * (b[key].double() - a[key].double())
            torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=1e-6, msg=key)
        else:  # VAE, position_ids: the first model's, bit for bit, in its dtype
            assert tensor.dtype == a[key].dtype and torch.equal(tensor, a[key]), key


def test_positional_blocks_cover_in_mid_out_in_order(plugins, tmp_path):
    values = [i / 100 for i in range(25)]
    alpha = mc.blocks("sd1", "unet", *values)
    assert list(alpha) == [f"sd1_unet_block_{b}" for b in [*(f"in{i}" for i in range(12)), "mid",
                                                          *(f"out{i}" for i in range(12))]]
    with pytest.raises(mc.RecipeError, match="25 blocks"):
        mc.blocks("sd1", "unet", *values[:24])
    assert len(mc.blocks("sd1", "unet", *values[:3], strict=False)) == 3
    a, b = tiny_model("sd1", seed=1), tiny_model("sd1", seed=2)
    merged = mc.merge(mc.weighted_sum(a, b, alpha=alpha), save_dtype="fp32")
    key = UNET + "output_blocks.5.1.proj_in.weight"  # out5 is the 19th block
    torch.testing.assert_close(merged[key], a[key].lerp(b[key], values[18]), rtol=0, atol=1e-6)


def test_the_vae_is_the_first_models_bit_for_bit(plugins, tmp_path):
    a, b = tiny_model("sd1", seed=1, dtype=torch.float16), tiny_model("sd1", seed=2, dtype=torch.float16)
    merged = mc.merge(mc.weighted_sum(write_model(a, tmp_path / "a.safetensors"),
                                      write_model(b, tmp_path / "b.safetensors"), alpha=0.5))
    vae = [key for key in a if key.startswith("first_stage_model.")]
    assert len(vae) == 248
    assert all(merged[key].dtype == torch.float16 and torch.equal(merged[key], a[key]) for key in vae)


def test_ema_passes_through_or_is_dropped(plugins, tmp_path):
    sd1 = plugins.architectures.get("sd1")
    a, b = sd1.generate(seed=1, optional=True), sd1.generate(seed=2, optional=True)
    ema = [key for key in a if key.startswith("model_ema.")]
    assert len(ema) == 688
    kept = mc.merge(mc.weighted_sum(a, b, alpha=0.5), save_dtype="fp32")
    assert all(torch.equal(kept[key], a[key]) for key in ema)
    dropped = mc.merge(mc.weighted_sum(a, b, alpha=0.5), save_dtype="fp32", drop=["ema"])
    assert not any(key.startswith("model_ema.") for key in dropped)
    assert len(dropped) == len(a) - len(ema)


def test_mixed_architectures_are_refused_before_any_tensor_is_read(plugins, tmp_path, monkeypatch):
    sd1 = write_model(tiny_model("sd1"), tmp_path / "one.safetensors")
    sdxl = write_model(tiny_model("sdxl"), tmp_path / "xl.safetensors")

    def no_reading(*args, **kwargs):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(SafetensorsFile, "read", no_reading)
    monkeypatch.setattr(SafetensorsFile, "read_flat", no_reading)
    refusal = r"different architectures.*one\.safetensors is sd1.*xl\.safetensors is sdxl"
    with pytest.raises(mc.MergeError, match=refusal):
        mc.merge(mc.weighted_sum(sd1, sdxl, alpha=0.5), tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_a_hyperparameter_of_another_architecture_is_refused(plugins):
    a, b = tiny_model("sd1", seed=1), tiny_model("sd1", seed=2)
    with pytest.raises(mc.MechaError, match="sdxl_txt2_default.*another architecture"):
        mc.merge(mc.weighted_sum(a, b, alpha=mc.default("sdxl", "txt2", 0.5)))
