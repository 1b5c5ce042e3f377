"""FLUX.1 LoRAs: kohya names (``lora_unet_double_blocks_0_img_attn_qkv``, ``lora_te1_``, ``lora_te3_``) and the
diffusers/AI-Toolkit/PEFT names, whose separate q/k/v (and a single block's q/k/v/MLP) land in row slices
of the checkpoint's fused ``qkv`` and ``linear1``. Expected weights are computed here by hand from the
factors; diffusers' own converter of kohya FLUX LoRAs is the oracle for the name map."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.tensor_files import SafetensorsFile
from mecha_core.testing import tiny_model, write_model

ROOT = "model.diffusion_model."
CLIP = "text_encoders.clip_l.transformer."
T5 = "text_encoders.t5xxl.transformer."
H = 16  # the tiny transformer's hidden width: qkv 3H rows, linear1 3H + 4H, final modulation 2H


@pytest.fixture
def flux(plugins):
    import mecha_flux
    plugins.register(mecha_flux, "flux")
    return plugins


def randn(*shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def lora_module(name, rows, columns, rank, seed, alpha=None, peft=False):
    """A LoRA module's tensors and its delta, up @ down * alpha / rank, computed here."""
    down, up = randn(rank, columns, seed=seed), randn(rows, rank, seed=seed + 1000)
    tensors = {f"{name}.{'lora_A' if peft else 'lora_down'}.weight": down,
               f"{name}.{'lora_B' if peft else 'lora_up'}.weight": up}
    if alpha is not None:
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    return tensors, up @ down * ((alpha / rank) if alpha is not None else 1.0)


def baked(recipe):
    return mc.merge(recipe, save_dtype=torch.float32)


def assert_baked(result, model, deltas, alpha):
    """Every key of `result` is the model's plus alpha times its delta (zero for keys without one)."""
    assert result.keys() == model.keys()
    for key, tensor in result.items():
        expected = model[key] + alpha * deltas[key] if key in deltas else model[key]
        torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")


def test_a_kohya_flux_lora_is_detected_and_bakes_into_its_layers(flux, tmp_path):
    model = tiny_model("flux", seed=1)
    layers = {"lora_unet_double_blocks_0_img_attn_qkv": ROOT + "double_blocks.0.img_attn.qkv.weight",
              "lora_unet_double_blocks_18_txt_mod_lin": ROOT + "double_blocks.18.txt_mod.lin.weight",
              "lora_unet_single_blocks_37_linear1": ROOT + "single_blocks.37.linear1.weight",
              "lora_unet_final_layer_adaLN_modulation_1": ROOT + "final_layer.adaLN_modulation.1.weight",
              "lora_unet_txt_in": ROOT + "txt_in.weight",
              "lora_te1_text_model_encoder_layers_0_self_attn_q_proj":
                  CLIP + "text_model.encoder.layers.0.self_attn.q_proj.weight",
              "lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0":
                  T5 + "encoder.block.1.layer.1.DenseReluDense.wi_0.weight"}
    tensors, deltas = {}, {}
    for seed, (name, key) in enumerate(layers.items()):
        rows, columns = model[key].shape
        module, deltas[key] = lora_module(name, rows, columns, rank=2, seed=seed, alpha=1.0)
        tensors.update(module)
    lora = write_model(tensors, tmp_path / "kohya.safetensors")
    base = write_model(model, tmp_path / "flux.safetensors")
    assert deltas[ROOT + "single_blocks.37.linear1.weight"].shape == (7 * H, H)
    assert_baked(baked(mc.add_difference(base, lora, alpha=0.7)), model, deltas, 0.7)


def test_a_flux_lora_bakes_into_a_transformer_alone_without_the_prefix(flux, tmp_path):
    """Most FLUX files hold the transformer alone, as Black Forest Labs names it: the result keeps that."""
    full = tiny_model("flux", seed=2)
    model = {key.removeprefix(ROOT): tensor for key, tensor in full.items() if key.startswith(ROOT)}
    tensors, delta = lora_module("lora_unet_single_blocks_3_linear2", H, 5 * H, rank=3, seed=7, alpha=6.0)
    lora = write_model(tensors, tmp_path / "l.safetensors")
    result = baked(mc.add_difference(write_model(model, tmp_path / "flux1-dev.safetensors"), lora))
    assert_baked(result, model, {"single_blocks.3.linear2.weight": delta}, 1.0)


def slices(*blocks):
    """A key's delta from its row slices, in order; None for a slice without a module (zero rows)."""
    return torch.cat([torch.zeros(rows, H) if delta is None else delta for rows, delta in blocks])


def test_diffusers_names_land_in_row_slices_of_the_fused_layers(flux, tmp_path):
    model = tiny_model("flux", seed=3)
    parts = {}

    def module(name, rows, columns=H, seed=0):
        tensors, delta = lora_module(f"transformer.{name}", rows, columns, rank=2, seed=seed, peft=True)
        parts.update(tensors)
        return delta

    single = "single_transformer_blocks.5."
    k, mlp = module(single + "attn.to_k", H, seed=1), module(single + "proj_mlp", 4 * H, seed=2)
    out = module(single + "proj_out", H, 5 * H, seed=3)
    add_v = module("transformer_blocks.2.attn.add_v_proj", H, seed=4)
    q = module("transformer_blocks.2.attn.to_q", H, seed=5)
    norm_out = module("norm_out.linear", 2 * H, seed=6)  # diffusers' (scale, shift): the checkpoint's (shift, scale)
    x_embedder = module("x_embedder", H, 8, seed=7)
    text, text_delta = lora_module("text_encoder.text_model.encoder.layers.3.mlp.fc1", 32, 8, rank=2, seed=8, peft=True)
    parts.update(text)
    deltas = {ROOT + "single_blocks.5.linear1.weight": slices((H, None), (H, k), (H, None), (4 * H, mlp)),
              ROOT + "single_blocks.5.linear2.weight": out,
              ROOT + "double_blocks.2.txt_attn.qkv.weight": slices((H, None), (H, None), (H, add_v)),
              ROOT + "double_blocks.2.img_attn.qkv.weight": slices((H, q), (H, None), (H, None)),
              ROOT + "final_layer.adaLN_modulation.1.weight": torch.cat([norm_out[H:], norm_out[:H]]),
              ROOT + "img_in.weight": x_embedder,
              CLIP + "text_model.encoder.layers.3.mlp.fc1.weight": text_delta}
    lora = write_model(parts, tmp_path / "ai-toolkit.safetensors")
    result = baked(mc.add_difference(write_model(model, tmp_path / "flux.safetensors"), lora, alpha=0.5))
    assert_baked(result, model, deltas, 0.5)


def test_loha_lokr_and_full_modules_share_one_fused_layer(flux, tmp_path):
    """LyCORIS algorithms on slices of ``linear1``: q a full ``diff``, v a LoKr, the MLP a LoHa, k none."""
    model = tiny_model("flux", seed=4)
    name = "transformer.single_transformer_blocks.0."
    diff = randn(H, H, seed=1)
    w1, w2 = randn(4, 4, seed=2), randn(4, 4, seed=3)
    shapes = (("hada_w1_a", (4 * H, 2)), ("hada_w1_b", (2, H)), ("hada_w2_a", (4 * H, 2)), ("hada_w2_b", (2, H)))
    hada = {part: randn(*shape, seed=10 + i) for i, (part, shape) in enumerate(shapes)}
    tensors = {f"{name}attn.to_q.diff": diff, f"{name}attn.to_v.lokr_w1": w1, f"{name}attn.to_v.lokr_w2": w2,
               f"{name}attn.to_v.alpha": torch.tensor(1.0),  # whole factors: LyCORIS ignores alpha
               **{f"{name}proj_mlp.{part}": tensor for part, tensor in hada.items()},
               f"{name}proj_mlp.alpha": torch.tensor(1.0)}
    loha = (hada["hada_w1_a"] @ hada["hada_w1_b"]) * (hada["hada_w2_a"] @ hada["hada_w2_b"]) * 0.5  # alpha / rank
    delta = slices((H, diff), (H, None), (H, torch.kron(w1, w2)), (4 * H, loha))
    lora = write_model(tensors, tmp_path / "lycoris.safetensors")
    result = baked(mc.add_difference(write_model(model, tmp_path / "flux.safetensors"), lora))
    assert_baked(result, model, {ROOT + "single_blocks.0.linear1.weight": delta}, 1.0)


def test_kohya_and_diffusers_flux_loras_mix(flux, tmp_path):
    """A kohya LoRA of a whole ``linear1`` and a diffusers one of its MLP slice, mixed, then baked."""
    model = tiny_model("flux", seed=5)
    kohya, whole = lora_module("lora_unet_single_blocks_1_linear1", 7 * H, H, rank=4, seed=1, alpha=2.0)
    peft, mlp = lora_module("transformer.single_transformer_blocks.1.proj_mlp", 4 * H, H, rank=2, seed=2, peft=True)
    mix = mc.weighted_sum(write_model(kohya, tmp_path / "a.safetensors"), write_model(peft, tmp_path / "b.safetensors"),
                          alpha=0.25)
    result = baked(mc.add_difference(write_model(model, tmp_path / "flux.safetensors"), mix))
    expected = 0.75 * whole + 0.25 * slices((3 * H, None), (4 * H, mlp))
    assert_baked(result, model, {ROOT + "single_blocks.1.linear1.weight": expected}, 1.0)


def test_mixed_conventions_and_missing_layers_are_refused_by_name(flux, tmp_path):
    model_path = write_model(tiny_model("flux"), tmp_path / "flux.safetensors")
    kohya, _ = lora_module("lora_unet_double_blocks_0_img_attn_qkv", 3 * H, H, rank=2, seed=1, alpha=1.0)
    peft, _ = lora_module("transformer.transformer_blocks.0.attn.to_k", H, H, rank=2, seed=2, peft=True)
    mixed = write_model({**kohya, **peft}, tmp_path / "mixed.safetensors")
    with pytest.raises(mc.MechaError, match=r"named in several conventions \(kohya: "
                       r"lora_unet_double_blocks_0_img_attn_qkv; diffusers/PEFT: transformer\.transformer_blocks\.0\.attn\.to_k\)"):
        baked(mc.add_difference(model_path, mixed))
    typo, _ = lora_module("transformer.single_transformer_blocks.0.attn.to_kk", H, H, rank=2, seed=3, peft=True)
    good, _ = lora_module("transformer.single_transformer_blocks.0.proj_mlp", 4 * H, H, rank=2, seed=4, peft=True)
    wrong = write_model({**typo, **good}, tmp_path / "typo.safetensors")
    with pytest.raises(mc.MechaError, match=r"a LoRA for flux \(1 of 2 modules placed\).*module "
                       r"transformer\.single_transformer_blocks\.0\.attn\.to_kk; the nearest layer name to .* is "
                       r"'transformer\.single_transformer_blocks\.0\.attn\.to_k'"):
        baked(mc.add_difference(model_path, wrong))


def read_all(path):
    with SafetensorsFile(path) as file:
        return {name: file.read(name).clone() for name in file.tensors}


def test_diffusers_converter_of_a_kohya_flux_lora_bakes_the_same(flux, tmp_path):
    """diffusers converts kohya FLUX LoRAs to its own names (with the real widths: it hard-codes 3072 and
    the single blocks' q/k/v/MLP split). Read in mecha, the conversion makes the same deltas as the
    original: q/k/v copies of ``down`` (rank 1), a split of a block-diagonal ``up`` with ``down`` in row
    blocks (kohya's ``split_qkv``: rank 4 for linear1's 4 slices), the final modulation's halves swapped."""
    conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    width, mlp = 3072, 12288
    tensors = {}
    shapes = {"lora_unet_double_blocks_0_img_attn_qkv": (3 * width, width, 1),
              "lora_unet_double_blocks_0_txt_attn_proj": (width, width, 2),
              "lora_unet_final_layer_adaLN_modulation_1": (2 * width, width, 1),
              "lora_unet_img_in": (width, 64, 2),
              "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768, 2),
              "lora_te1_text_model_encoder_layers_0_mlp_fc1": (3072, 768, 2)}
    for seed, (name, (rows, columns, rank)) in enumerate(shapes.items()):
        # the converter drops the final layer's alpha (its "TODO: alphas"): scale 1 there
        alpha = rank if "final_layer" in name else rank / 2
        tensors.update(lora_module(name, rows, columns, rank, seed=seed, alpha=alpha)[0])
    split = "lora_unet_single_blocks_0_linear1"
    up = torch.zeros(3 * width + mlp, 4)
    for block, (first, rows) in enumerate(((0, width), (width, width), (2 * width, width), (3 * width, mlp))):
        up[first:first + rows, block] = randn(rows, seed=20 + block)
    tensors.update({f"{split}.lora_down.weight": randn(4, width, seed=30), f"{split}.lora_up.weight": up,
                    f"{split}.alpha": torch.tensor(2.0)})
    converted = conversion._convert_kohya_flux_lora_to_diffusers({k: v.clone() for k, v in tensors.items()})
    # the converter leaves the top-level layers unprefixed; diffusers' loader reads them as the transformer's
    converted = {name if name.startswith(("transformer.", "text_encoder.")) else f"transformer.{name}": tensor
                 for name, tensor in converted.items()}
    assert {"transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight", "transformer.x_embedder.lora_B.weight",
            "transformer.norm_out.linear.lora_A.weight", "transformer.transformer_blocks.0.attn.to_v.lora_B.weight"} \
        <= converted.keys()
    assert converted["transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight"].shape == (1, width)
    kohya = baked(mc.model(write_model(tensors, tmp_path / "kohya.safetensors"), type="lora", arch="flux"))
    diffusers = baked(mc.model(write_model(converted, tmp_path / "diffusers.safetensors"), type="lora", arch="flux"))
    assert diffusers.keys() == kohya.keys() and len(kohya) == 7
    for key, tensor in kohya.items():
        torch.testing.assert_close(diffusers[key], tensor, rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")


def test_flux_names_kohya_and_diffusers(flux, reference):
    """kohya names every conv/linear layer of the reference FLUX.1-dev layout ``lora_unet_`` + its path, T5's
    ``lora_te3_``; each written name is read back to its rows; the slices sum to their layers."""
    from mecha_lora.naming import Target, lora_names
    names = lora_names(flux.architectures.get("flux"))
    rows = [line.split("\t") for line in (reference / "flux-dev.tsv").read_text().splitlines()[1:]]
    layers = {key: tuple(map(int, shape.split(","))) for key, component, _, shape, *_ in rows
              if component == "diffuser" and key.endswith(".weight") and shape.count(",") == 1}
    assert {key: names.kohya[key] for key in layers} == \
        {key: ("lora_unet_" + key.removeprefix(ROOT).removesuffix(".weight").replace(".", "_"),) for key in layers}
    assert names.kohya[T5 + "encoder.block.0.layer.0.SelfAttention.q.weight"] == \
        ("lora_te3_encoder_block_0_layer_0_SelfAttention_q",)
    assert names.kohya[CLIP + "text_model.encoder.layers.0.mlp.fc1.weight"] == \
        ("lora_te1_text_model_encoder_layers_0_mlp_fc1",)
    linear1 = ROOT + "single_blocks.3.linear1.weight"
    assert [(name, target) for name, target in names.peft[linear1]] == [
        ("transformer.single_transformer_blocks.3.attn.to_q", Target(linear1, 0, 3072)),
        ("transformer.single_transformer_blocks.3.attn.to_k", Target(linear1, 3072, 3072)),
        ("transformer.single_transformer_blocks.3.attn.to_v", Target(linear1, 6144, 3072)),
        ("transformer.single_transformer_blocks.3.proj_mlp", Target(linear1, 9216, 12288))]
    for name in ("lora_transformer_single_transformer_blocks_3_proj_mlp", "lycoris_single_transformer_blocks_3_proj_mlp",
                 "base_model.model.single_transformer_blocks.3.proj_mlp"):
        assert names.targets[name] == Target(linear1, 9216, 12288)
    assert names.targets["diffusion_model.single_blocks.3.linear1"] == Target(linear1)
    final = ROOT + "final_layer.adaLN_modulation.1.weight"
    assert names.targets["transformer.norm_out.linear"] == Target(final, swap=True)
    assert not names.targets["transformer.transformer_blocks.4.norm1_context.linear"].swap
    trained = {key for key in names.trained if key.startswith(ROOT)}
    assert trained == {key for key in layers if ".double_blocks." in key or ".single_blocks." in key}


def test_flux_diffusers_names_are_the_linear_layers_of_diffusers_flux_transformer(flux):
    """The PEFT names mecha reads and writes for the transformer are exactly the linear layers of diffusers'
    FluxTransformer2DModel (built on the meta device, FLUX.1-dev's config), each as wide as its slice."""
    diffusers = pytest.importorskip("diffusers")
    from mecha_lora.naming import lora_names
    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel(guidance_embeds=True)
    linear = {name: tuple(module.weight.shape) for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear)}
    architecture = flux.architectures.get("flux")
    names = lora_names(architecture)
    written = {name.removeprefix("transformer."): (target.rows or architecture.key_specs[key].shape[0],
                                                    architecture.key_specs[key].shape[1])
               for key, modules in names.peft.items() if key.startswith(ROOT) for name, target in modules}
    assert written == linear


def test_a_flux_lora_saved_in_peft_names_splits_the_fused_layers_and_round_trips(flux, tmp_path):
    """``--lora-format peft`` for FLUX: a merge of two kohya LoRAs written in diffusers' names, fused qkv and
    linear1 cut into their q/k/v(/MLP) slices (the names of diffusers' linear layers); read back, it makes
    the deltas of the merge, and saved as kohya again, one module per fused layer."""
    from mecha_lora.generation import random_lora
    architecture = flux.architectures.get("flux")
    paths = [write_model(random_lora(architecture, rank=2, seed=seed), tmp_path / f"l{seed}.safetensors")
             for seed in (1, 2)]
    mix = mc.weighted_sum(*paths, alpha=0.25)
    peft = mc.merge(mix, tmp_path / "peft.safetensors", save_as="lora",
                    save_options={"rank": 4, "format": "peft"}, save_dtype=torch.float32)
    saved = read_all(peft)
    block = "transformer.single_transformer_blocks.7."
    assert [tuple(saved[f"{block}{name}.lora_B.weight"].shape) for name in ("attn.to_q", "attn.to_k", "attn.to_v",
                                                                             "proj_mlp")] == [(H, 4)] * 3 + [(4 * H, 4)]
    assert not any(name.startswith(("lora_", "transformer.single_transformer_blocks.7.linear")) for name in saved)
    assert {name.split(".")[0] for name in saved} == {"transformer", "text_encoder", "text_encoder_2"}
    expected = baked(mix)
    reloaded = baked(mc.model(peft, type="lora", arch="flux"))
    assert reloaded.keys() == expected.keys()
    for key, tensor in reloaded.items():
        torch.testing.assert_close(tensor, expected[key], rtol=1e-4, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    kohya = read_all(mc.merge(mc.model(peft, type="lora", arch="flux"), tmp_path / "kohya.safetensors", save_as="lora",
                              save_options={"rank": 4}, save_dtype=torch.float32))
    assert kohya["lora_unet_single_blocks_7_linear1.lora_up.weight"].shape == (7 * H, 4)
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight" in kohya


def test_the_final_modulation_is_saved_with_diffusers_halves(flux, tmp_path):
    """diffusers' ``norm_out.linear`` holds (scale, shift) where the checkpoint holds (shift, scale)."""
    tensors, delta = lora_module("lora_unet_final_layer_adaLN_modulation_1", 2 * H, H, rank=2, seed=3, alpha=2.0)
    lora = mc.model(write_model(tensors, tmp_path / "k.safetensors"), type="lora", arch="flux")
    saved = read_all(mc.merge(lora, tmp_path / "peft.safetensors", save_as="lora",
                              save_options={"rank": 2, "format": "peft"}, save_dtype=torch.float32))
    assert saved.keys() == {"transformer.norm_out.linear.lora_A.weight", "transformer.norm_out.linear.lora_B.weight"}
    product = saved["transformer.norm_out.linear.lora_B.weight"] @ saved["transformer.norm_out.linear.lora_A.weight"]
    torch.testing.assert_close(product, torch.cat([delta[H:], delta[:H]]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("width", "arch"), [(3072, "flux"), (1536, "sd3")])
def test_a_diffusers_transformer_lora_is_told_from_sd3_by_its_widths(flux, mecha_cli, tmp_path, width, arch):
    """``transformer.transformer_blocks.0.attn.to_q`` is a layer of both SD3 and FLUX: the header's shapes decide."""
    tensors, _ = lora_module("transformer.transformer_blocks.0.attn.to_q", width, width, rank=1, seed=0, peft=True)
    result = mecha_cli("inspect", write_model(tensors, tmp_path / "q.safetensors"))
    assert result.status == 0, result.err
    assert f"architecture: {arch}\n" in result.out and "naming:       diffusers/PEFT" in result.out


def test_a_dora_on_a_slice_renormalises_only_its_rows(flux, tmp_path):
    """A PEFT DoRA of a single block's ``to_k``: rows H..2H of ``linear1`` become m * (W + D) / norm(W + D)."""
    model = tiny_model("flux", seed=6)
    name = "transformer.single_transformer_blocks.4.attn.to_k"
    tensors, delta = lora_module(name, H, H, rank=2, seed=1, peft=True)
    magnitude = randn(H, seed=2).abs() + 0.5
    tensors[f"{name}.lora_magnitude_vector"] = magnitude
    key = ROOT + "single_blocks.4.linear1.weight"
    merged = model[key][H:2 * H] + delta
    changed = magnitude[:, None] * merged / (merged.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps)
    expected = model[key].clone()
    expected[H:2 * H] = changed
    lora = write_model(tensors, tmp_path / "dora.safetensors")
    result = baked(mc.add_difference(write_model(model, tmp_path / "flux.safetensors"), lora))
    assert_baked(result, model, {key: expected - model[key]}, 1.0)


def test_comfyui_flux_names_bake_whole_layers(flux, tmp_path):
    model = tiny_model("flux", seed=7)
    tensors, delta = lora_module("diffusion_model.single_blocks.2.linear1", 7 * H, H, rank=2, seed=3, alpha=4.0)
    lora = write_model(tensors, tmp_path / "comfy.safetensors")
    result = baked(mc.add_difference(write_model(model, tmp_path / "flux.safetensors"), lora, alpha=0.3))
    assert_baked(result, model, {ROOT + "single_blocks.2.linear1.weight": delta}, 0.3)
