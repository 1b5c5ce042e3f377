"""Detection from the header alone: dtypes, pruned files, old spellings, near misses, `mecha inspect`."""

from __future__ import annotations

import json

import pytest
import torch

import mecha_core as mc
from mecha_core.cli import main
from mecha_core.planning import detect_model
from mecha_core import open_tensor_file
from mecha_core.testing import tiny_model, write_model


def detect(plugins, path):
    with open_tensor_file(path) as file:
        model_type, arch, note = detect_model(file, plugins)
    return model_type.name, arch, note


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "sd3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_each_architecture_is_detected_in_every_dtype(plugins, tmp_path, arch, dtype):
    path = write_model(tiny_model(arch, dtype=dtype), tmp_path / "m.safetensors")
    assert detect(plugins, path) == ("base", arch, "")


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "sd3"])
def test_files_with_or_without_optional_keys_are_detected(plugins, tmp_path, arch):
    architecture = plugins.architectures.get(arch)
    full = architecture.generate(optional=True)
    required = {k: v for k, v in full.items() if not architecture.key_specs[k].optional}
    assert detect(plugins, write_model(full, tmp_path / "full.safetensors"))[1] == arch
    assert detect(plugins, write_model(required, tmp_path / "required.safetensors"))[1] == arch


def test_a_pruned_fp16_sd1_file_is_detected(plugins, tmp_path):
    model = tiny_model("sd1", dtype=torch.float16)
    assert len(model) == 1131 and not any(k.startswith("model_ema") for k in model)
    assert detect(plugins, write_model(model, tmp_path / "pruned.safetensors"))[1] == "sd1"


def test_old_sd1_spellings_are_detected_and_read_under_the_current_names(plugins, tmp_path):
    prefix = "cond_stage_model.transformer."
    model = plugins.architectures.get("sd1").generate(optional=True)
    old = {k.replace(prefix + "text_model.", prefix).replace("model_ema.diffusion_model", "model_ema."): v
           for k, v in model.items()}
    assert prefix + "encoder.layers.0.mlp.fc1.weight" in old and "model_ema.input_blocks00weight" in old
    a = write_model(old, tmp_path / "old.safetensors")
    b = write_model(plugins.architectures.get("sd1").generate(seed=1), tmp_path / "new.safetensors")
    assert detect(plugins, a)[1] == "sd1"
    merged = mc.merge(mc.weighted_sum(a, b, alpha=0.0), save_dtype="fp32")
    key = prefix + "text_model.encoder.layers.0.mlp.fc1.weight"
    assert merged[key].equal(model[key])
    ema = "model_ema.diffusion_modelinput_blocks00weight"
    assert merged[ema].equal(model[ema])


def test_a_near_miss_falls_back_to_generic_with_a_note(plugins, tmp_path):
    model = tiny_model("sdxl")
    removed = sorted(model)[1000:1040]
    for key in removed:
        del model[key]
    model_type, arch, note = detect(plugins, write_model(model, tmp_path / "partial.safetensors"))
    assert arch == "generic"
    assert note.startswith("looks like sdxl but 40 keys are missing: " + removed[0])


def test_inspect_reports_architecture_type_and_recipe(plugins, tmp_path, capsys):
    path = write_model(tiny_model("sd1", dtype=torch.float16), tmp_path / "m.safetensors",
                       {"mecha_recipe": 'version 1\nmodel "a"\n'})
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["architecture"], report["model_type"], report["keys"]) == ("sd1", "base", 1131)
    assert report["dtypes"] == {"F16": 1130, "I64": 1} and report["recipe"].startswith("version 1")
    assert report["unknown_keys"] == [] and report["missing_keys"] == []
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "architecture: sd1" in out and "model type:   base" in out and 'model "a"' in out
