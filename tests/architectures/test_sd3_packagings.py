"""SD3 files as people share them: with all text encoders, without T5-XXL (``sd3_medium_incl_clips``),
or the MMDiT alone (with or without its VAE); all are ``sd3`` and merge by SD3's rules."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.planning import detect_model
from mecha_core import open_tensor_file
from mecha_core.testing import write_model
from mecha_sd3.sd3 import SD3

T5 = "text_encoders.t5xxl."
PACKAGINGS = {
    "all-text-encoders": lambda key: True,
    "incl-clips": lambda key: not key.startswith(T5),
    "mmdit-and-vae": lambda key: key.startswith(("model.diffusion_model.", "first_stage_model.")),
    "mmdit": lambda key: key.startswith("model.diffusion_model."),
}


@pytest.mark.parametrize("packaging", PACKAGINGS)
def test_every_shared_sd3_packaging_is_detected(plugins, tmp_path, packaging):
    model = {k: v for k, v in SD3.generate().items() if PACKAGINGS[packaging](k)}
    with open_tensor_file(write_model(model, tmp_path / "m.safetensors")) as file:
        assert detect_model(file, plugins)[1:] == ("sd3", "")


def test_a_file_without_t5_merges_by_sd3s_rules(plugins, tmp_path):
    a = {k: v for k, v in SD3.generate(seed=1).items() if not k.startswith(T5)}
    b = {k: v for k, v in SD3.generate(seed=2).items() if not k.startswith(T5)}
    merged = mc.merge(mc.weighted_sum(write_model(a, tmp_path / "a.safetensors"),
                                      write_model(b, tmp_path / "b.safetensors"), alpha=0.5), None, save_dtype="fp32")
    assert sorted(merged) == sorted(a)
    vae, sigmas = "first_stage_model.decoder.conv_in.weight", "model.model_sampling.sigmas"
    assert merged[vae].equal(a[vae]) and merged[sigmas].equal(a[sigmas])  # passed through, not averaged
    key = "model.diffusion_model.joint_blocks.2.x_block.attn.qkv.weight"
    torch.testing.assert_close(merged[key], (a[key] + b[key]) / 2, rtol=0, atol=1e-7)
