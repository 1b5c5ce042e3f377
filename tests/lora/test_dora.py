"""DoRA in merge spaces: added to a model it takes that model's weight; read as a plain delta (mixed
with another LoRA, added to a delta, saved as a LoRA) it is refused with the reason. The expected
weights are the DoRA formula written out here (the LyCORIS comparison is in test_lycoris.py)."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.testing import tiny_model, write_model

KEY = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
MODULE = "lora_te_text_model_encoder_layers_0_mlp_fc1"
OTHER_KEY = "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight"
OTHER = "lora_te_text_model_encoder_layers_1_mlp_fc2"


def factors(rows, columns, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, columns, generator=generator) * 0.3, torch.randn(rows, 2, generator=generator) * 0.3


def dora_file(model, tmp_path, peft=False):
    """A LoRA file with one DoRA module (rank 2, alpha 1) and one plain module; returns its path, the
    DoRA's delta and magnitude, and the plain module's delta."""
    rows, columns = model[KEY].shape
    down, up = factors(rows, columns, 1)
    magnitude = model[KEY].norm(dim=1) * (1 + 0.1 * torch.arange(rows) / rows)
    other_down, other_up = factors(model[OTHER_KEY].shape[0], model[OTHER_KEY].shape[1], 2)
    if peft:
        lora = {f"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": down,
                f"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight": up,
                f"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_magnitude_vector": magnitude,
                f"text_encoder.text_model.encoder.layers.1.mlp.fc2.lora_A.weight": other_down,
                f"text_encoder.text_model.encoder.layers.1.mlp.fc2.lora_B.weight": other_up}
        scale = 1.0  # no alpha
    else:
        lora = {f"{MODULE}.lora_down.weight": down, f"{MODULE}.lora_up.weight": up, f"{MODULE}.alpha": torch.tensor(1.0),
                f"{MODULE}.dora_scale": magnitude.reshape(rows, 1),
                f"{OTHER}.lora_down.weight": other_down, f"{OTHER}.lora_up.weight": other_up}
        scale = 0.5
    path = write_model(lora, tmp_path / ("peft-dora.safetensors" if peft else "dora.safetensors"))
    return mc.model(path, type="lora", arch="sd1"), scale * up @ down, magnitude, other_up @ other_down


def dora_weight(weight, delta, magnitude):
    merged = (weight + delta).double()
    return merged * (magnitude.double()[:, None] / (merged.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps))


@pytest.mark.parametrize("peft", [False, True], ids=["kohya-dora_scale", "peft-lora_magnitude_vector"])
def test_a_dora_added_to_a_model_takes_that_models_weight(plugins, tmp_path, peft):
    model = tiny_model("sd1", seed=1)
    path, delta, magnitude, other = dora_file(model, tmp_path, peft)
    model_path = write_model(model, tmp_path / "model.safetensors")
    merged = mc.merge(mc.add_difference(model_path, path, alpha=0.6), save_dtype=torch.float32)
    expected = model[KEY].double() + 0.6 * (dora_weight(model[KEY], delta, magnitude) - model[KEY].double())
    torch.testing.assert_close(merged[KEY].double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged[OTHER_KEY], model[OTHER_KEY] + 0.6 * other, rtol=1e-5, atol=1e-6)


def test_a_dora_on_a_baked_model_takes_the_baked_weight(plugins, tmp_path):
    model = tiny_model("sd1", seed=1)
    path, delta, magnitude, _ = dora_file(model, tmp_path)
    rows, columns = model[KEY].shape
    down, up = factors(rows, columns, 5)
    first = write_model({f"{MODULE}.lora_down.weight": down, f"{MODULE}.lora_up.weight": up}, tmp_path / "l.safetensors")
    model_path = write_model(model, tmp_path / "model.safetensors")
    first_lora = mc.model(first, type="lora", arch="sd1")
    recipe = mc.add_difference(mc.add_difference(model_path, first_lora, alpha=1.0), path, alpha=1.0)
    merged = mc.merge(recipe, save_dtype=torch.float32)
    torch.testing.assert_close(merged[KEY].double(), dora_weight(model[KEY] + up @ down, delta, magnitude),
                               rtol=1e-5, atol=1e-6)


REFUSAL = r"LoRA module 'lora_te_text_model_encoder_layers_0_mlp_fc1' is a DoRA \(it has a dora_scale\): its change " \
          r"to '.*fc1.weight' depends on the weight it is applied to, so it is no delta of its own"


@pytest.mark.parametrize("recipe", ["mixed", "added to a delta", "alone"])
def test_a_dora_read_as_a_plain_delta_is_refused_with_the_reason(plugins, tmp_path, recipe):
    model = tiny_model("sd1", seed=1)
    path, *_ = dora_file(model, tmp_path)
    rows, columns = model[KEY].shape
    down, up = factors(rows, columns, 5)
    plain = mc.model(write_model({f"{MODULE}.lora_down.weight": down, f"{MODULE}.lora_up.weight": up},
                                 tmp_path / "plain.safetensors"), type="lora", arch="sd1")
    node = {"mixed": mc.weighted_sum(plain, path, alpha=0.5), "added to a delta": mc.add_difference(plain, path),
            "alone": path}[recipe]
    with pytest.raises(mc.MechaError, match=REFUSAL):
        mc.merge(node)


def test_a_dora_cannot_be_saved_as_a_lora(plugins, mecha_cli, tmp_path):
    node, *_ = dora_file(tiny_model("sd1", seed=1), tmp_path)
    recipe = tmp_path / "dora.mecha"
    recipe.write_text(f'version 1\nmodel "{node.source}" type="lora" arch="sd1"\n')
    result = mecha_cli("merge", recipe, "-o", tmp_path / "out.safetensors", "--as-lora", "4")
    assert result.status == 1 and len(result.err.strip().splitlines()) == 1
    assert "is a DoRA (it has a dora_scale)" in result.err and "add_difference(model, dora, alpha)" in result.err
    assert not (tmp_path / "out.safetensors").exists()


def test_a_dora_scale_of_neither_orientation_is_refused(plugins, tmp_path):
    model = tiny_model("sd1", seed=1)
    rows, columns = model[KEY].shape
    down, up = factors(rows, columns, 1)
    path = write_model({f"{MODULE}.lora_down.weight": down, f"{MODULE}.lora_up.weight": up,
                        f"{MODULE}.dora_scale": torch.ones(3, 1)}, tmp_path / "bad.safetensors")
    model_path = write_model(model, tmp_path / "model.safetensors")
    with pytest.raises(mc.MechaError, match=rf"LoRA module '{MODULE}': its dora_scale has shape \[3, 1\], expected "
                                            rf"\({rows}, 1, ...\) for norms of the output rows or \(1, {columns}, ...\)"):
        mc.merge(mc.add_difference(model_path, mc.model(path, type="lora", arch="sd1")))
