"""Random models: consistent with the architecture, small when tiny, streamable key by key."""

from __future__ import annotations

import math

import pytest
import torch
from mecha_core.random_models import random_tensor, write_random_model
from mecha_core import open_tensor_file
from mecha_core.testing import check_architecture, write_model
from mecha_sd1 import sd1
from mecha_sd1.sd1 import SD1
from mecha_sd_blocks import PRUNED_COMPONENTS
from mecha_sd3 import sd3
from mecha_sd3.sd3 import SD3
from mecha_sdxl import sdxl
from mecha_sdxl.sdxl import SDXL


@pytest.mark.parametrize("arch", [SD1, SDXL, SD3], ids=lambda a: a.name)
def test_architecture_passes_the_core_checks(arch, tmp_path):
    tensors = check_architecture(arch)
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    path = write_model(half, tmp_path / "m.safetensors")
    assert path.stat().st_size < 2_000_000  # tiny files keep tests fast


@pytest.mark.parametrize("keys", [sd1.keys, sdxl.keys, sd3.keys], ids=["sd1", "sdxl", "sd3"])
def test_tiny_shapes_keep_the_structure(keys):
    real, tiny = {s.name: s for s in keys()}, {s.name: s for s in keys(tiny=True)}
    assert list(real) == list(tiny)
    for name, spec in tiny.items():
        assert len(spec.shape) == len(real[name].shape), name
        assert all(0 <= d <= r for d, r in zip(spec.shape, real[name].shape)), name
    context = set()
    for name, spec in tiny.items():
        if name.endswith(("in_proj_weight", "attn.qkv.weight")):  # fused q/k/v: three times the width
            assert spec.shape[0] == 3 * spec.shape[1], name
        if name.endswith("attn2.to_k.weight"):  # cross-attention reads the text encoders' width
            context.add(spec.shape[1])
    assert len(context) <= 1


def test_a_streamed_file_equals_the_generated_dict(tmp_path):
    path = write_random_model(tmp_path / "s.safetensors", sd1.keys(tiny=True), seed=3, dtype=torch.float16,
                              pruned=PRUNED_COMPONENTS)
    expected = SD1.generate(seed=3, dtype=torch.float16)
    with open_tensor_file(path) as file:
        assert set(file.tensors) == set(expected)
        assert all(torch.equal(file.read(k), v) for k, v in expected.items())


def test_each_key_depends_only_on_seed_and_name():
    spec = SD1.key_specs["model.diffusion_model.input_blocks.1.1.proj_in.weight"]
    assert torch.equal(random_tensor(spec, 5), random_tensor(spec, 5))
    assert not torch.equal(random_tensor(spec, 5), random_tensor(spec, 6))
    ids = SD1.key_specs["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert random_tensor(ids).tolist() == [list(range(77))]
    assert random_tensor(spec, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert random_tensor(spec).std().item() == pytest.approx(1 / math.sqrt(320), rel=0.05)
