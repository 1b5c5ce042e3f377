"""FLUX.1 through an executor that writes parts elsewhere: the output keeps the layout model's
spellings (a transformer file's unprefixed names), `layout=` named as the recipe names it and
`save_dtype_all` travel in the job, and every part is written under the driver's names, so the file
is byte-identical to the local executor's."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.testing import write_model
from mecha_flux.flux import FLUX

from ..core.parts_executor import InProcessParts

PREFIX = "model.diffusion_model."

CASES = {
    # recipe's models (by name, under the models folder), merge options, whether the output is unprefixed
    "first model's spellings": (("alone", "full"), {}, True),
    "layout= names the transformer": (("full", "alone"), {"layout": "alone.safetensors"}, True),
    "layout= names the all-in-one, save_dtype_all": (("alone", "full"), {"layout": "full.safetensors",
                                                                          "save_dtype_all": True}, False),
}


@pytest.mark.parametrize("case", CASES)
def test_a_respelled_flux_merge_in_parts_is_byte_identical_to_local(plugins, tmp_path, case):
    names, options, unprefixed = CASES[case]
    full = FLUX.generate(seed=1, dtype=torch.bfloat16)
    alone = {k.removeprefix(PREFIX): v for k, v in FLUX.generate(seed=2).items() if k.startswith(PREFIX)}
    write_model(full, tmp_path / "full.safetensors")
    write_model(alone, tmp_path / "alone.safetensors")
    executor = InProcessParts(3)
    plugins.register(executor, "parts")
    recipe = mc.weighted_sum(*(f"{name}.safetensors" for name in names), alpha=0.25)
    for run in ("local", "parts"):
        (tmp_path / run).mkdir()
        mc.merge(recipe, tmp_path / run / "out.safetensors", models_dir=tmp_path, save_dtype="fp16",
                 executor=run, **options)
    written = (tmp_path / "parts" / "out.safetensors").read_bytes()
    assert written == (tmp_path / "local" / "out.safetensors").read_bytes()
    with mc.open_tensor_file(tmp_path / "parts" / "out.safetensors") as out:
        assert sorted(out.tensors) == sorted(alone if unprefixed else full)
        if options.get("save_dtype_all"):
            assert out.tensors["vae.decoder.conv_in.weight"].torch_dtype_name == "float16"  # a copied key, converted
    job = executor.jobs[0]
    assert len(job.parts[0].entries) == len(alone if unprefixed else full)
    assert job.options["layout"] in (None, str(tmp_path / options.get("layout", "")))
    assert job.options["save_dtype_all"] is bool(options.get("save_dtype_all"))
    assert [p.name for p in (tmp_path / "parts").iterdir()] == ["out.safetensors"]
