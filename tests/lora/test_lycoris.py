"""LyCORIS algorithms (LoCon with its CP core, LoHa, LoKr, full, DoRA) baked by mecha, module by module
against the reference implementation, the ``lycoris-lora`` package: each module is built by LyCORIS on
a layer holding the checkpoint's weight, given random factors, written with LyCORIS's own tensor names
(``custom_state_dict``), and its layer's weight after merging is LyCORIS's. Skipped without it."""

from __future__ import annotations

import math

import pytest
import torch

import mecha_core as mc
from mecha_core.testing import tiny_model, write_model
from mecha_lora.naming import lora_names

lycoris_modules = pytest.importorskip("lycoris.modules")

ROOT = "model.diffusion_model."
LINEAR = ROOT + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"  # reshaped to odd sizes below
WIDE = ROOT + "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"  # has a bias
CONV = ROOT + "input_blocks.1.0.in_layers.2.weight"  # 3 x 3, has a bias
POINTWISE = ROOT + "input_blocks.1.1.proj_in.weight"  # 1 x 1
SHAPES = {LINEAR: (15, 21), WIDE: (40, 24), CONV: (12, 10, 3, 3)}


def checkpoint():
    """A tiny SD1 checkpoint whose test layers have odd and unequal sizes (a LoRA's shapes are its own)."""
    model = tiny_model("sd1", seed=1)
    generator = torch.Generator().manual_seed(7)
    for key, shape in SHAPES.items():
        model[key] = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        bias = key.removesuffix("weight") + "bias"
        if bias in model:
            model[bias] = torch.randn(shape[0], generator=generator)
    return model


def layer(weight, bias=None):
    """A torch layer holding a checkpoint weight, for LyCORIS to wrap."""
    if weight.dim() == 2:
        module = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        module = torch.nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], bias=bias is not None)
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)
    return module


def randomised(module, seed):
    """Random factors for a LyCORIS module (its initialisation zeroes one side); a DoRA's magnitude is
    moved off the weight's norms."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name == "dora_scale":
                parameter.mul_(1 + 0.2 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return module


def merged_weight(module, weight):
    """The layer's weight with the module applied at strength 1, as LyCORIS's forward computes it.

    lycoris-lora 4.1.3's ``get_merged_weight`` scales LoHa and LoKr deltas by alpha / rank twice
    (``get_weight`` already applies it); its forward, like ComfyUI, kohya and A1111, once."""
    lyc = lycoris_modules
    with torch.no_grad():
        if isinstance(module, (lyc.loha.LohaModule, lyc.lokr.LokrModule)):
            delta = module.get_weight(weight.shape)
        elif isinstance(module, lyc.full.FullModule):
            delta = module.custom_state_dict()["diff"]
        else:
            delta = module.get_diff_weight()[0].reshape(weight.shape)
        if getattr(module, "wd", False):
            return module.apply_weight_decompose(weight + delta, 1.0)
        return weight + delta


def module_factory(kind, **options):
    lyc = lycoris_modules
    cls = {"locon": lyc.locon.LoConModule, "loha": lyc.loha.LohaModule, "lokr": lyc.lokr.LokrModule,
           "full": lyc.full.FullModule}[kind]

    def make(name, org):
        if kind == "full":
            return cls(name, org, 1.0)
        return cls(name, org, 1.0, options.pop("rank", 3), options.pop("alpha", 1.5), **options)
    return make


CASES = {
    "loha-linear": (LINEAR, module_factory("loha")),
    "loha-conv": (CONV, module_factory("loha", rank=2)),
    "loha-conv-cp": (CONV, module_factory("loha", rank=2, use_tucker=True)),
    "loha-pointwise": (POINTWISE, module_factory("loha", rank=2)),
    "lokr-linear": (LINEAR, module_factory("lokr", rank=2)),
    "lokr-linear-factor-3": (LINEAR, module_factory("lokr", rank=1, factor=3)),
    "lokr-wide-factor-4-both": (WIDE, module_factory("lokr", rank=2, factor=4, decompose_both=True)),
    "lokr-wide-factor-8": (WIDE, module_factory("lokr", rank=2, factor=8)),
    "lokr-full-matrix": (WIDE, module_factory("lokr", rank=2, factor=4, full_matrix=True, alpha=5.0)),
    "lokr-conv": (CONV, module_factory("lokr", rank=1, factor=2)),
    "lokr-conv-cp": (CONV, module_factory("lokr", rank=1, factor=2, use_tucker=True)),
    "locon-conv-cp": (CONV, module_factory("locon", rank=2, use_tucker=True)),
    "full-conv": (CONV, module_factory("full")),
    "full-linear": (WIDE, module_factory("full")),
    "dora-lora-linear": (WIDE, module_factory("locon", rank=2, weight_decompose=True)),
    "dora-locon-conv": (CONV, module_factory("locon", rank=2, weight_decompose=True)),
    "dora-loha-conv-in": (CONV, module_factory("loha", rank=2, weight_decompose=True, wd_on_out=False)),
    "dora-lokr-linear": (LINEAR, module_factory("lokr", rank=1, factor=3, weight_decompose=True)),
    "dora-lokr-linear-in": (WIDE, module_factory("lokr", rank=2, factor=4, weight_decompose=True, wd_on_out=False)),
}


def lycoris_file(plugins, model, cases, seed=0):
    """A LoRA file of LyCORIS modules on the given layers (kohya names), and each layer's weight and
    bias as LyCORIS merges them."""
    names = lora_names(plugins.architectures.get("sd1")).kohya
    tensors, expected = {}, {}
    for offset, (key, make) in enumerate(cases):
        bias_key = key.removesuffix("weight") + "bias"
        bias = model.get(bias_key)
        name = names[key][0]
        module = randomised(make(name, layer(model[key], bias)), seed + offset)
        state = {part: tensor.detach().clone() for part, tensor in module.custom_state_dict().items()}
        tensors.update({f"{name}.{part}": tensor for part, tensor in state.items()})
        expected[key] = merged_weight(module, model[key])
        if "diff_b" in state:
            expected[bias_key] = bias + state["diff_b"]
    return tensors, expected


def bake(model, lora, tmp_path, alpha=1.0, **options):
    model_path = write_model(model, tmp_path / "model.safetensors")
    lora_path = write_model(lora, tmp_path / "lycoris.safetensors")
    lora_model = mc.model(lora_path, type="lora", arch="sd1")  # a few modules may fit SDXL's names as well
    return mc.merge(mc.add_difference(model_path, lora_model, alpha=alpha), save_dtype=torch.float32, **options)


@pytest.mark.parametrize("case", CASES)
def test_a_lycoris_module_bakes_to_the_references_weight(plugins, tmp_path, case):
    model = checkpoint()
    lora, expected = lycoris_file(plugins, model, [CASES[case]])
    merged = bake(model, lora, tmp_path)
    assert expected and merged.keys() == model.keys()
    for key, tensor in merged.items():
        torch.testing.assert_close(tensor, expected.get(key, model[key]), rtol=1e-5, atol=2e-6,
                                   msg=lambda m, key=key: f"{case}, {key}: {m}")


def test_a_file_of_several_algorithms_bakes_at_a_strength(plugins, tmp_path):
    """Plain deltas scale with alpha; each module lands on its own layer."""
    model = checkpoint()
    cases = [CASES["loha-conv-cp"], CASES["lokr-linear"], CASES["full-linear"]]
    lora, expected = lycoris_file(plugins, model, cases, seed=10)
    merged = bake(model, lora, tmp_path, alpha=0.4)
    for key, weight in expected.items():
        torch.testing.assert_close(merged[key], model[key] + 0.4 * (weight - model[key]), rtol=1e-5, atol=2e-6)


def test_a_dora_at_a_strength_moves_the_weight_that_far_towards_the_doras(plugins, tmp_path):
    model = checkpoint()
    lora, expected = lycoris_file(plugins, model, [CASES["dora-locon-conv"]])
    merged = bake(model, lora, tmp_path, alpha=0.3)
    torch.testing.assert_close(merged[CONV], model[CONV] + 0.3 * (expected[CONV] - model[CONV]), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("case", ["loha-linear", "lokr-wide-factor-4-both", "lokr-conv-cp"])
def test_chunks_of_a_lycoris_delta_are_bytes_of_the_whole(plugins, tmp_path, case):
    """A small memory budget streams keys in chunks; the result is the bytes of whole keys."""
    model = checkpoint()
    lora, _ = lycoris_file(plugins, model, [CASES[case]])
    whole = bake(model, lora, tmp_path)
    chunked = bake(model, lora, tmp_path, memory_budget=200, threads=1)
    assert all(torch.equal(chunked[key], whole[key]) for key in whole)


def test_two_lokr_files_mix_and_bake(plugins, tmp_path):
    """The mix users ask for (two LoKr, which the popular UI merger fails on): a weighted sum of their deltas."""
    model = checkpoint()
    cases = [CASES["lokr-wide-factor-4-both"], CASES["lokr-conv-cp"]]
    (one, first), (two, second) = lycoris_file(plugins, model, cases, seed=1), lycoris_file(plugins, model, cases, seed=2)
    paths = [mc.model(write_model(lora, tmp_path / f"lokr{i}.safetensors"), type="lora", arch="sd1")
             for i, lora in enumerate((one, two))]
    model_path = write_model(model, tmp_path / "model.safetensors")
    mix = mc.weighted_sum(*paths, alpha=0.25)
    merged = mc.merge(mc.add_difference(model_path, mix, alpha=1.0), save_dtype=torch.float32)
    for key in first:
        expected = model[key] + 0.75 * (first[key] - model[key]) + 0.25 * (second[key] - model[key])
        torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=2e-6)
