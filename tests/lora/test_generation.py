"""Random LoRAs: streamed and in-memory ones agree, hold every layer kohya trains, and fit the shapes."""

from __future__ import annotations

import pytest
import torch

from mecha_core.tensor_files import SafetensorsFile
from mecha_lora.generation import lora_layout, random_lora, write_random_lora
from mecha_lora.naming import lora_names


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "sd3"])
def test_a_streamed_lora_equals_the_in_memory_one(plugins, tmp_path, arch):
    architecture = plugins.architectures.get(arch)
    expected = random_lora(architecture, rank=3, seed=5, dtype=torch.float16)
    path = write_random_lora(tmp_path / "l.safetensors", architecture, rank=3, seed=5, tiny=True)
    with SafetensorsFile(path) as file:
        assert file.tensors.keys() == expected.keys()
        assert all(torch.equal(file.read(name), tensor) for name, tensor in expected.items())
    names = lora_names(architecture)
    assert {name.split(".")[0] for name in expected} == {m for key in names.trained for m in names.kohya[key]}


def test_real_size_modules_have_the_shapes_of_their_layers(plugins):
    architecture = plugins.architectures.get("sdxl")
    names = lora_names(architecture)
    layout = {name: (down, up) for name, down, up in lora_layout(architecture, 32)}
    # the UNet's 722 attention and 66 residual/resampling layers, CLIP-L, and OpenCLIP with q, k, v apart
    assert len(layout) == 722 + 66 + 12 * 6 + 32 * 6
    for key in names.trained:
        shape = architecture.key_specs[key].shape
        for name in names.kohya[key]:
            down, up = layout[name]
            assert (up[0] * len(names.kohya[key]), *down[1:]) == shape and down[0] == up[1] == 32
            assert up[2:] == ((1, 1) if len(shape) == 4 else ())


def test_a_plain_lora_leaves_out_the_kxk_convolutions_a_locon_trains(plugins):
    architecture = plugins.architectures.get("sdxl")
    locon = {name: down for name, down, _ in lora_layout(architecture, 8)}
    plain = {name: down for name, down, _ in lora_layout(architecture, 8, conv=False)}
    kxk = {name for name, down in locon.items() if len(down) == 4 and down[2:] != (1, 1)}
    assert kxk and all(down[2:] == (3, 3) for name, down in locon.items() if name in kxk)
    assert plain == {name: down for name, down in locon.items() if name not in kxk}


@pytest.mark.parametrize("algo, parts", [("loha", {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}),
                                         ("lokr", {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"})])
def test_a_random_lycoris_file_has_a_module_per_lora_layer_and_bakes(plugins, tmp_path, algo, parts):
    import mecha_core as mc
    from mecha_core.testing import tiny_model, write_model
    architecture = plugins.architectures.get("sd1")
    path = write_random_lora(tmp_path / f"{algo}.safetensors", architecture, rank=2, tiny=True, algo=algo)
    with SafetensorsFile(path) as file:
        names = set(file.tensors)
    assert {name.split(".")[0] for name in names} == {name for name, _, _ in lora_layout(architecture, 2, tiny=True)}
    assert {name.split(".")[1] for name in names} <= parts
    model = write_model(tiny_model("sd1", seed=1), tmp_path / "model.safetensors")
    baked = mc.merge(mc.add_difference(model, path), save_dtype=torch.float32)
    base = mc.merge(mc.model(model), save_dtype=torch.float32)
    assert sum(not torch.equal(baked[key], base[key]) for key in base) == len(lora_names(architecture).trained)
