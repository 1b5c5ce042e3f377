"""What surprised 0.0.x users: an architecture forced on a file it does not fit, a delta result saved as a
checkpoint, a random seed, and sd-mecha names looked up on mecha_core."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.testing import tiny_model, write_model

from .conftest import load, metadata


def test_an_explicit_architecture_that_does_not_fit_is_an_error_unless_not_strict(models, tmp_path):
    sdxl = write_model(tiny_model("sdxl", seed=3), tmp_path / "xl.safetensors")
    forced = mc.weighted_sum(mc.model("ghost", arch="sdxl"), mc.model(sdxl))
    with pytest.raises(mc.MechaError, match=r"ghost.*arch='sdxl' was given, but its keys are those of sd1.*"
                                            r"strict=False \(mecha merge --no-strict\)"):
        mc.merge(forced, models_dir=models / "Stable-diffusion")
    assert mc.merge(mc.model("ghost", arch="sdxl"), models_dir=models / "Stable-diffusion", strict=False)
    assert mc.merge(mc.weighted_sum(mc.model("ghost", "sd1", "base"), "dream"), models_dir=models / "Stable-diffusion")


def test_no_strict_on_the_cli(models, mecha_cli, tmp_path):
    recipe = tmp_path / "forced.mecha"
    recipe.write_text('model "ghost" arch="sdxl"\nmodel "dream" arch="sdxl"\nmerge "weighted_sum" &0 &1')
    args = ("merge", recipe, "--models-dir", models / "Stable-diffusion", "-o", tmp_path / "o.safetensors", "--quiet")
    refused = mecha_cli(*args)
    assert refused.status == 1 and "--no-strict" in refused.err and not (tmp_path / "o.safetensors").exists()
    assert mecha_cli(*args, "--no-strict").status == 0


def test_a_delta_result_is_refused_for_a_checkpoint_with_the_hint(models, mecha_cli, tmp_path):
    recipe = tmp_path / "delta.mecha"
    recipe.write_text('model "ghost"\nmodel "dream"\nmerge "subtract" &0 &1')
    out = tmp_path / "delta.safetensors"
    result = mecha_cli("merge", recipe, "--models-dir", models / "Stable-diffusion", "-o", out, "--quiet")
    assert result.status == 1 and "--as-lora RANK" in result.err and "add_difference(model, recipe)" in result.err
    assert not out.exists()
    assert mecha_cli("merge", recipe, "--models-dir", models / "Stable-diffusion", "-o", out, "--as-lora", "2",
                     "--quiet").status == 0
    assert mc.merge(mc.subtract("ghost", "dream"), models_dir=models / "Stable-diffusion")  # a dict: deltas are fine


def test_a_negative_seed_draws_one_that_the_output_s_recipe_keeps(models, tmp_path, caplog):
    recipe = mc.add_difference("ghost", mc.dropout(mc.subtract("dream", "ghost"), seed=-1), alpha=0.5)
    with caplog.at_level("WARNING", logger="mecha"):
        out = mc.merge(recipe, tmp_path / "o.safetensors", models_dir=models / "Stable-diffusion")
    drawn = int(caplog.text.split("drew seed=")[1].split()[0])
    stored = mc.deserialize(metadata(out)["mecha_recipe"])
    assert recipe.inputs[1].hypers["seed"] == -1 and stored.inputs[1].hypers["seed"] == drawn >= 0
    again = mc.merge(stored, models_dir=models / "Stable-diffusion")
    written = load(out)
    assert all(torch.equal(again[k].to(written[k].dtype), written[k]) for k in written)


@pytest.mark.parametrize("name, where", [
    ("set_log_level", "mecha_compat"), ("RecipeMerger", "mecha_compat"), ("lora", "mecha_compat"),
    ("add_perpendicular", "from mecha_methods import add_perpendicular"),
])
def test_sd_mecha_names_on_mecha_core_say_where_they_live(plugins, name, where):
    with pytest.raises(AttributeError, match=f"sd-mecha's {name} is not a merge method; it lives in .*{where}"):
        getattr(mc, name)


def test_unknown_names_on_mecha_core_still_suggest_methods(plugins):
    with pytest.raises(AttributeError, match="did you mean 'weighted_sum'"):
        mc.wieghted_sum


def test_an_explicit_family_architecture_is_checked_against_the_model_s_own_keys(mecha_plugins, tmp_path):
    """A family (the LLM one) lists its keys per model: arch="llm" on an LLM fits; on an SD1 file it does not."""
    import mecha_llm
    import mecha_methods
    import mecha_sd1
    for module, name in ((mecha_methods, "methods"), (mecha_llm, "llm"), (mecha_sd1, "sd1")):
        mecha_plugins.register(module, name)
    from tests.llm.conftest import llama_state_dict
    llm = write_model(llama_state_dict(), tmp_path / "llm.safetensors")
    assert mc.merge(mc.weighted_sum(mc.model(llm, arch="llm"), mc.model(llm, arch="llm")))
    sd1 = write_model(tiny_model("sd1"), tmp_path / "sd1.safetensors")
    with pytest.raises(mc.MechaError, match="arch='llm' was given|none of its keys belong to architecture 'llm'"):
        mc.merge(mc.model(sd1, arch="llm"))
