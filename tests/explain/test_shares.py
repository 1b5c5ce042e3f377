"""Each model's share per component, block and class equals the hand-computed one, on SD1, SDXL and
a generic model; a nonlinear node stops the share and is named; the merge itself agrees."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.testing import tiny_model, write_model

from .conftest import tiny_headers

SD1_ATTN2_BLOCKS = ("in1", "in2", "in4", "in5", "in7", "in8", "mid", *(f"out{i}" for i in range(3, 12)))


def per_block(explanation, component, class_=None):
    """{block: {term: coefficient}} for one component (and class), the zero terms left out;
    "" stands for the keys in no block."""
    found = {}
    for share in explanation.shares:
        if share.component == component and share.class_ == class_:
            for block in share.blocks or ("",):
                assert block not in found
                found[block] = {t: c for t, c in share.coefficients.items() if c != 0}
    return found


def close(found, expected):
    assert found.keys() == expected.keys()
    for term in expected:
        assert found[term] == pytest.approx(expected[term], abs=1e-12), term


@pytest.fixture
def sd1_files(plugins, tmp_path):
    """Header-only: shares need no tensor data."""
    return tiny_headers(tmp_path, "sd1")


def sd1_recipe(a, b, c):
    inner_alpha = (mc.blocks("sd1", "unet", *[0.2] * 12, 0.6, *[0.8] * 12)
                   | mc.classes("sd1", "unet", attn2_to_k=1.0) | mc.default("sd1", "txt", 0.4))
    outer_alpha = mc.default("sd1", "unet", 0.5) | mc.blocks("sd1", "unet", out11=0.9) | mc.default("sd1", "txt", 0.25)
    return mc.weighted_sum(mc.weighted_sum(a, b, alpha=inner_alpha), c, alpha=outer_alpha)


def test_sd1_nested_weighted_sums(sd1_files):
    a, b, c = sd1_files
    explanation = mc.explain(sd1_recipe(a, b, c))
    assert [m.label for m in explanation.models] == ["A", "B", "C"]
    assert [m.file for m in explanation.models] == [str(a), str(b), str(c)]
    assert explanation.stops == []
    # txt: inner 0.6 A + 0.4 B, outer 0.75 inner + 0.25 C
    txt = per_block(explanation, "txt")
    assert list(txt) == [f"in{i}" for i in range(12)]
    for shares in txt.values():
        close(shares, {"A": 0.45, "B": 0.3, "C": 0.25})
    unet = per_block(explanation, "unet")
    assert list(unet) == [*(f"in{i}" for i in range(12)), "mid", *(f"out{i}" for i in range(12))]
    for block in (f"in{i}" for i in range(12)):
        close(unet[block], {"A": 0.4, "B": 0.1, "C": 0.5})  # 0.5 (0.8 A + 0.2 B) + 0.5 C
    close(unet["mid"], {"A": 0.2, "B": 0.3, "C": 0.5})
    for block in (f"out{i}" for i in range(11)):
        close(unet[block], {"A": 0.1, "B": 0.4, "C": 0.5})
    close(unet["out11"], {"A": 0.02, "B": 0.08, "C": 0.9})  # 0.1 (0.2 A + 0.8 B) + 0.9 C
    # attn2_to_k takes all of B in the inner merge, wherever the class exists
    attn = per_block(explanation, "unet", "attn2_to_k")
    assert tuple(attn) == SD1_ATTN2_BLOCKS
    for block in SD1_ATTN2_BLOCKS[:-1]:
        close(attn[block], {"B": 0.5, "C": 0.5})
    close(attn["out11"], {"B": 0.1, "C": 0.9})
    assert {s.class_ for s in explanation.shares} == {None, "attn2_to_k"}
    # time_embed belongs to the 21 blocks holding a residual block: its inner alpha is their mean,
    # (8 x 0.2 + 0.6 + 12 x 0.8) / 21, and its outer alpha the one block value given among them, out11's 0.9
    time_embed = [k for k in explanation.key_shares if ".time_embed." in k.key]
    assert len(time_embed) == len(explanation.key_shares) == 4
    inner = 11.8 / 21
    for key_share in time_embed:
        close(key_share.coefficients, {"A": 0.1 * (1 - inner), "B": 0.1 * inner, "C": 0.9})
        assert key_share.reason == "in 21 blocks: the mean of their values"


def test_the_merge_follows_the_shares(plugins, tmp_path):
    """The shares are the merge's own coefficients: the merged tensors equal them applied to the inputs."""
    sd1_files = [write_model(tiny_model("sd1", seed=seed), tmp_path / f"{name}.safetensors")
                 for seed, name in enumerate("abc")]
    a, b, c = sd1_files
    recipe = sd1_recipe(a, b, c)
    explanation = mc.explain(recipe)
    merged = mc.merge(recipe, save_dtype="float32")
    inputs = {label: mc.open_tensor_file(path) for label, path in zip("ABC", sd1_files)}
    keys = {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": ("in1", "attn2_to_k"),
        "model.diffusion_model.output_blocks.11.0.in_layers.2.weight": ("out11", None),
        "model.diffusion_model.middle_block.1.proj_in.weight": ("mid", None),
        "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight": ("in3", None),
    }
    for key, (block, class_) in keys.items():
        component = "txt" if key.startswith("cond") else "unet"
        shares = per_block(explanation, component, class_)[block]
        expected = sum(weight * inputs[term].read(key).double() for term, weight in shares.items())
        torch.testing.assert_close(merged[key].double(), expected, rtol=1e-5, atol=1e-6)
    for file in inputs.values():
        file.close()


def test_sdxl_linear_methods(plugins, tmp_path):
    a, b, c = tiny_headers(tmp_path, "sdxl")
    alpha = mc.blocks("sdxl", "txt2", in0=2.0) | mc.default("sdxl", "unet", 1.0) | mc.classes("sdxl", "unet", attn1_to_q=-1.0)
    recipe = mc.add_difference(mc.n_average(a, b, c), mc.subtract(b, c), alpha=alpha)
    explanation = mc.explain(recipe)
    third = 1 / 3
    txt = per_block(explanation, "txt")
    assert txt and all(s == pytest.approx({"A": third, "B": third, "C": third}) for s in txt.values())
    txt2 = per_block(explanation, "txt2")
    close(txt2["in0"], {"A": third, "B": third + 2, "C": third - 2})
    for block in list(txt2)[1:]:
        close(txt2[block], {"A": third, "B": third, "C": third})
    for shares in per_block(explanation, "unet").values():
        close(shares, {"A": third, "B": third + 1, "C": third - 1})
    attn = per_block(explanation, "unet", "attn1_to_q")
    assert attn
    for shares in attn.values():
        close(shares, {"A": third, "B": third - 1, "C": third + 1})


def generic_model(seed: int, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    names = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"]
    for layer in range(3):
        names += [f"model.layers.{layer}.self_attn.q_proj.weight", f"model.layers.{layer}.mlp.up_proj.weight"]
    return {n: torch.randn(4, 4, generator=generator) for n in names if n not in skip}


def test_generic_model_blocks_classes_and_missing_keys(plugins, tmp_path):
    missing = "model.layers.1.self_attn.q_proj.weight"
    a = write_model(generic_model(0), tmp_path / "a.safetensors")
    b = write_model(generic_model(1), tmp_path / "b.safetensors")
    c = write_model(generic_model(2, skip=(missing,)), tmp_path / "c.safetensors")
    alpha = {"generic_model_block_model_layers_1": 0.5, "generic_model_class_self_attn_q_proj": 1.0}
    recipe = mc.weighted_sum(a, mc.linear(b, c, weight=[1.0, 3.0]), alpha=alpha)
    explanation = mc.explain(recipe)
    assert explanation.architecture == "generic"
    blocks = per_block(explanation, "model")
    assert list(blocks) == ["model_layers_0", "model_layers_1", "model_layers_2", ""]
    close(blocks["model_layers_0"], {"A": 1.0})  # alpha has no default: 0
    close(blocks["model_layers_1"], {"A": 0.5, "B": 0.125, "C": 0.375})  # 0.5 A + 0.5 (0.25 B + 0.75 C)
    close(blocks[""], {"A": 1.0})  # embed_tokens, lm_head, norm: in no block
    q_proj = per_block(explanation, "model", "self_attn_q_proj")
    for block in ("model_layers_0", "model_layers_1", "model_layers_2"):
        close(q_proj[block], {"B": 0.25, "C": 0.75})
    # C lacks one key: linear takes B alone there
    assert [(k.key, k.reason) for k in explanation.key_shares] == [(missing, "missing in C")]
    close({t: v for t, v in explanation.key_shares[0].coefficients.items() if v}, {"B": 1.0})
    assert any("C lacks 1 of the merged keys" in w for w in explanation.warnings)
    merged = mc.merge(recipe, save_dtype="float32")
    torch.testing.assert_close(merged[missing], generic_model(1)[missing])


def test_a_nonlinear_node_stops_the_share_and_is_named(sd1_files):
    a, b, c = sd1_files
    recipe = mc.add_difference(mc.weighted_sum(a, mc.ties_merge(a, b, c), alpha=0.4), mc.subtract(b, a), alpha=0.5)
    explanation = mc.explain(recipe)
    assert explanation.stops == ["ties_merge(A, B, C)"]
    assert explanation.terms == ["A", "B", "C", "ties_merge(A, B, C)"]
    for component in ("txt", "unet"):
        for shares in per_block(explanation, component).values():
            # 0.6 A + 0.4 ties + 0.5 B - 0.5 A
            close(shares, {"A": 0.1, "B": 0.5, "ties_merge(A, B, C)": 0.4})
    steps = explanation.recipe
    assert [s.method for s in steps if not s.linear] == ["ties_merge"]
    assert steps[-1].method == "add_difference" and steps[steps[-1].inputs[0]].method == "weighted_sum"


def test_a_model_named_twice_is_one_model(sd1_files):
    a, b, _ = sd1_files
    explanation = mc.explain(mc.weighted_sum(mc.weighted_sum(a, b, alpha=0.5), a, alpha=0.5))
    assert [m.label for m in explanation.models] == ["A", "B"]
    for shares in per_block(explanation, "unet").values():
        close(shares, {"A": 0.75, "B": 0.25})
