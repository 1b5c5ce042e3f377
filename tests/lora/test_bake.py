"""Baking LoRAs into tiny SD1, SDXL and SD3 checkpoints, and mixing them, checked key by key against the
deltas the test composes itself (tests/lora/oracle.py)."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

import mecha_core as mc
from mecha_core.testing import tiny_model, write_model
from mecha_lora import source as source_module
from mecha_lora.generation import random_lora

from .oracle import composed, kohya_targets

ARCHS = ["sd1", "sdxl", "sd3"]


def files(plugins, tmp_path, arch, *seeds, lora_dtype=torch.float32):
    """A tiny checkpoint and LoRAs (one per seed) of `arch`, written to disk; returns the tensors and paths."""
    architecture = plugins.architectures.get(arch)
    base = tiny_model(arch, seed=1)
    loras = [random_lora(architecture, rank=4, seed=seed, dtype=lora_dtype) for seed in seeds]
    paths = [write_model(base, tmp_path / f"{arch}.safetensors")]
    paths += [write_model(lora, tmp_path / f"{arch}-lora{seed}.safetensors") for seed, lora in zip(seeds, loras)]
    return base, loras, paths


def check(merged, base, expected):
    """Every key of `expected` is base + that delta; every other key is the base's, bit for bit."""
    assert merged.keys() == base.keys()
    for key, tensor in merged.items():
        if key in expected:
            torch.testing.assert_close(tensor.double(), base[key].double() + expected[key], rtol=1e-5, atol=1e-6,
                                       msg=lambda m, key=key: f"{key}: {m}")
        else:
            assert torch.equal(tensor, base[key]), key


@pytest.mark.parametrize("arch", ARCHS)
def test_baking_adds_alpha_times_each_modules_product(plugins, tmp_path, arch):
    base, (lora,), (model_path, lora_path) = files(plugins, tmp_path, arch, 2)
    merged = mc.merge(mc.add_difference(model_path, lora_path, alpha=0.8), save_dtype=torch.float32)
    deltas = composed(lora, kohya_targets(arch, base), base)
    assert len(deltas) > 300
    check(merged, base, {key: 0.8 * delta for key, delta in deltas.items()})


@pytest.mark.parametrize("arch", ARCHS)
def test_two_loras_mix_in_delta_space(plugins, tmp_path, arch):
    base, (one, two), (model_path, one_path, two_path) = files(plugins, tmp_path, arch, 2, 3,
                                                               lora_dtype=torch.float16)
    mix = mc.weighted_sum(one_path, two_path, alpha=0.25)
    merged = mc.merge(mc.add_difference(model_path, mix, alpha=1.0), save_dtype=torch.float32)
    targets = kohya_targets(arch, base)
    first, second = composed(one, targets, base), composed(two, targets, base)
    check(merged, base, {key: 0.75 * first[key] + 0.25 * second[key] for key in first})


def test_baking_two_loras_one_after_the_other(plugins, tmp_path):
    base, (one, two), (model_path, one_path, two_path) = files(plugins, tmp_path, "sd1", 2, 3)
    recipe = mc.add_difference(mc.add_difference(model_path, one_path, alpha=0.5), two_path, alpha=-1.0)
    merged = mc.merge(recipe, save_dtype=torch.float32)
    targets = kohya_targets("sd1", base)
    first, second = composed(one, targets, base), composed(two, targets, base)
    check(merged, base, {key: 0.5 * first[key] - second[key] for key in first})


def test_a_lora_of_the_unet_alone_leaves_the_text_encoder_unchanged(plugins, tmp_path):
    base, (lora,), (model_path, _) = files(plugins, tmp_path, "sd1", 2)
    unet_only = {name: tensor for name, tensor in lora.items() if name.startswith("lora_unet_")}
    path = write_model(unet_only, tmp_path / "unet-only.safetensors")
    merged = mc.merge(mc.add_difference(model_path, path, alpha=1.0), save_dtype=torch.float32)
    deltas = composed(unet_only, kohya_targets("sd1", base), base)
    assert all(key.startswith("model.diffusion_model.") for key in deltas)
    check(merged, base, deltas)


def test_block_and_class_values_apply_to_lora_deltas(plugins, tmp_path):
    base, (lora,), (model_path, lora_path) = files(plugins, tmp_path, "sd1", 2)
    alpha = (mc.default("sd1", "unet", 1.0) | mc.blocks("sd1", "unet", in1=0.5)
             | mc.classes("sd1", "unet", attn2_to_k=0.0) | mc.default("sd1", "txt", 0.25))
    merged = mc.merge(mc.add_difference(model_path, lora_path, alpha=alpha), save_dtype=torch.float32)

    def value(key):  # the test's reading of the keys: class value, else block value, else component default
        if key.endswith(".attn2.to_k.weight"):
            return 0.0
        if key.startswith("model.diffusion_model.input_blocks.1."):
            return 0.5
        return 1.0 if key.startswith("model.diffusion_model.") else 0.25

    deltas = composed(lora, kohya_targets("sd1", base), base)
    check(merged, base, {key: value(key) * delta for key, delta in deltas.items()})


def test_a_missing_q_k_or_v_block_of_a_fused_projection_adds_nothing_there(plugins, tmp_path):
    base, (lora,), (model_path, _) = files(plugins, tmp_path, "sdxl", 2)
    layer = "lora_te2_text_model_encoder_layers_0_self_attn_"
    partial = {name: tensor for name, tensor in lora.items() if not name.startswith((layer + "k_", layer + "v_"))}
    path = write_model(partial, tmp_path / "partial.safetensors")
    merged = mc.merge(mc.add_difference(model_path, path, alpha=1.0), save_dtype=torch.float32)
    deltas = composed(partial, kohya_targets("sdxl", base), base)
    fused = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
    width = base[fused].shape[1]
    assert deltas[fused][:width].abs().sum() > 0 and deltas[fused][width:].abs().sum() == 0
    check(merged, base, deltas)


def test_a_loras_deltas_alone_merge_into_a_file_of_deltas(plugins, tmp_path):
    base, (lora,), (_, lora_path) = files(plugins, tmp_path, "sdxl", 2)
    merged = mc.merge(mc.model(lora_path), save_dtype=torch.float32)
    deltas = composed(lora, kohya_targets("sdxl", base), base)
    assert merged.keys() == deltas.keys()
    for key, delta in deltas.items():
        torch.testing.assert_close(merged[key].double(), delta, rtol=1e-5, atol=1e-7)


def test_a_key_only_one_mixed_lora_targets_gets_that_loras_whole_delta(plugins, tmp_path):
    base, (lora,), (model_path, _) = files(plugins, tmp_path, "sd1", 2)
    unet = write_model({k: v for k, v in lora.items() if k.startswith("lora_unet_")}, tmp_path / "unet.safetensors")
    text = write_model({k: v for k, v in lora.items() if k.startswith("lora_te_")}, tmp_path / "text.safetensors")
    mix = mc.weighted_sum(unet, text, alpha=0.25)  # no key is in both: each input stands in for the mix
    merged = mc.merge(mc.add_difference(model_path, mix, alpha=1.0), save_dtype=torch.float32)
    check(merged, base, composed(lora, kohya_targets("sd1", base), base))


def keys_in_chunks(plugins, tmp_path, arch):
    """Each key of a tiny LoRA of `arch`, opened: (source, key, random [start, stop) ranges covering its
    flattened delta), the ranges crossing rows, q/k/v blocks and (SD3) the halves of a swapped layer."""
    _, _, (_, lora_path) = files(plugins, tmp_path, arch, 2)
    generator = torch.Generator().manual_seed(0)
    with mc.open_tensor_file(lora_path) as file:
        source = plugins.model_types.get("lora").open(file, plugins.architectures.get(arch))
        for key in source.keys():
            size = math.prod(source.info(key).shape)
            cuts = sorted({0, size, *torch.randint(0, size + 1, (6,), generator=generator).tolist()})
            yield source, key, list(zip(cuts, cuts[1:]))


# the real ROW_BLOCK exceeds a tiny module's rows; 5 rows make modules of several blocks, the last one short
BLOCKS = pytest.mark.parametrize("row_block", [source_module.ROW_BLOCK, 5])


@BLOCKS
@pytest.mark.parametrize("arch", ARCHS)
def test_a_chunk_of_a_delta_is_the_same_bytes_as_the_whole_delta_sliced(plugins, tmp_path, arch, row_block, monkeypatch):
    """Elementwise merges read LoRA deltas in flat chunks, composing only the rows a chunk covers: any
    chunk equals the whole delta's slice, bit for bit."""
    monkeypatch.setattr(source_module, "ROW_BLOCK", row_block)
    for source, key, ranges in keys_in_chunks(plugins, tmp_path, arch):
        whole = source.read(key).reshape(-1)
        for start, stop in ranges:
            part = source.read_flat(key, start, stop)
            assert part.dtype == torch.float32 and torch.equal(part, whole[start:stop]), (key, start, stop)


@BLOCKS
@pytest.mark.parametrize("arch", ARCHS)
def test_adding_a_delta_in_chunks_adds_the_bytes_of_adding_it_whole(plugins, tmp_path, arch, row_block, monkeypatch):
    """add_difference adds a LoRA's product straight into the merge's buffer (add_flat): chunks add
    exactly what one call over the whole key adds, and that is the composed delta times alpha. A block
    of rows wholly inside a chunk is added in place, one the chunk cuts through a scratch copy."""
    monkeypatch.setattr(source_module, "ROW_BLOCK", row_block)
    generator = torch.Generator().manual_seed(1)
    for source, key, ranges in keys_in_chunks(plugins, tmp_path, arch):
        delta = source.read(key).reshape(-1).double()
        size = delta.numel()
        start = torch.randn(size, generator=generator)
        whole = start.clone()
        source.add_flat(key, 0, size, whole, 0.8)
        torch.testing.assert_close(whole.double(), start.double() + 0.8 * delta, rtol=1e-5, atol=1e-6)
        chunked = start.clone()
        for first, stop in ranges:
            source.add_flat(key, first, stop, chunked[first:stop], 0.8)
        assert torch.equal(chunked, whole), key


def test_a_bake_in_chunks_writes_the_bytes_of_a_bake_of_whole_keys(plugins, tmp_path):
    _, _, (model_path, lora_path) = files(plugins, tmp_path, "sdxl", 2)
    digests = set()
    for threads, budget in ((1, None), (2, 4096)):
        out = tmp_path / f"threads-{threads}" / "out.safetensors"  # one name: the title is in the metadata
        out.parent.mkdir()
        mc.merge(mc.add_difference(model_path, lora_path, alpha=0.7), out, threads=threads, memory_budget=budget)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
