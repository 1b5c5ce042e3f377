"""sd-mecha 0.0.25 scripts run with ``import mecha_compat as sd_mecha``: the shapes of its examples (a
weighted sum, a LoRA bake, TIES, n-average by chained sums, a block-wise split of text encoder and UNet,
an in-memory merge, a custom method), each checked against sd-mecha 0.0.25 where it is installed and
against values computed by hand here."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mecha_compat

from .conftest import assert_same_tensors, load

UNET_KEY = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
TEXT_KEY = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"


def merged(sd: Any, models, recipe_of, **merge_options: Any) -> dict[str, torch.Tensor]:
    """Run a script's merge into a dict, with a merger set up as the examples set it up."""
    merger = sd.RecipeMerger(models_dir=models / "Stable-diffusion", default_dtype=torch.float64)
    out: dict[str, torch.Tensor] = {}
    merger.merge_and_save(recipe_of(sd), output=out, save_dtype=torch.float32, **merge_options)
    return out


def sources(models) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load(models / "Stable-diffusion" / f"{name}.safetensors") for name in ("ghost", "dream", "pure")}


# each: a script body in the spirit of a 0.0.25 example, and the tolerance against 0.0.25
SCRIPTS = {
    "basic_merge": (lambda sd: sd.weighted_sum("ghost", "dream", alpha=0.3), 1e-6),
    "add_perpendicular": (lambda sd: sd.add_perpendicular("ghost", "dream", "pure"), 1e-6),
    "add_difference_with_c": (lambda sd: sd.add_difference("ghost", "dream", "pure", alpha=0.7), 1e-6),
    "copy_region": (lambda sd: sd.copy_region("ghost", "dream", "pure", width=0.5, offset=0.25, device="cpu"), 1e-6),
    "tensor_sum_helper": (lambda sd: sd.tensor_sum("ghost", "dream", width=0.5, device="cpu"), 1e-6),
    "copy_region_top_k": (lambda sd: sd.copy_region("ghost", "dream", width=0.4, top_k=True, device="cpu"), 1e-6),
    "cosine_add_a": (lambda sd: sd.cosine_add_a("ghost", "dream", alpha=0.5), 1e-6),
    "cosine_add_b": (lambda sd: sd.cosine_add_b("ghost", "dream", alpha=0.5), 1e-6),
    "rotate": (lambda sd: sd.rotate("ghost", "dream", alpha=0.3, device="cpu"), 1e-6),
    "rotate_with_c": (lambda sd: sd.rotate("ghost", "dream", "pure", alpha=0.5, device="cpu"), 1e-6),
    "n_average_chain": (lambda sd: _chained_average(sd, ["ghost", "dream", "pure"]), 1e-6),
    "split_unet_text_encoder": (lambda sd: sd.weighted_sum(
        sd.add_perpendicular("ghost", "dream", "pure"), sd.weighted_sum("ghost", "dream"),
        alpha=sd.default("sd1", "txt", 0) | sd.default("sd1", "unet", 1)), 1e-6),
    "blocks": (lambda sd: sd.weighted_sum("ghost", "dream", alpha=sd.blocks("sd1", "unet", in0=0.1, out11=0.9)
                                                                        | sd.default("sd1", "txt", 0.5)), 1e-6),
}


def _chained_average(sd: Any, names: list[str]) -> Any:
    recipe = names[0]
    for i, name in enumerate(names[1:], start=2):
        recipe = sd.weighted_sum(name, recipe, alpha=(i - 1) / i)
    return recipe


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_give_what_sd_mecha_0_0_25_gives(name, models, sd_mecha):
    recipe_of, atol = SCRIPTS[name]
    assert_same_tensors(merged(mecha_compat, models, recipe_of), merged(sd_mecha, models, recipe_of), atol)


def test_ties_scripts_agree_with_0_0_25_in_fp32(models, sd_mecha):
    """0.0.25 picks the TIES threshold in fp32 whatever the work dtype, so in fp64 it drops the k-th entry
    about half the time; in fp32 the two agree exactly."""
    for recipe_of in (lambda sd: sd.add_difference_ties("pure", "ghost", "dream", alpha=0.5),
                      lambda sd: sd.add_difference_ties_extended("pure", "ghost", "dream", alpha=0.5, apply_stock=1.0)):
        ours = _in_fp32(mecha_compat, models, recipe_of)
        assert_same_tensors(ours, _in_fp32(sd_mecha, models, recipe_of), 1e-6)


def _in_fp32(sd: Any, models, recipe_of) -> dict[str, torch.Tensor]:
    merger = sd.RecipeMerger(models_dir=models / "Stable-diffusion", default_dtype=torch.float32)
    out: dict[str, torch.Tensor] = {}
    merger.merge_and_save(recipe_of(sd), output=out, save_dtype=torch.float32)
    return out


def test_lora_bake_agrees_with_0_0_25(models, sd_mecha):
    def recipe_of(sd: Any) -> Any:
        return sd.add_difference("Stable-diffusion/ghost", sd.lora("Lora/detail.safetensors"), alpha=0.8)

    def run(sd: Any) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        sd.RecipeMerger(models_dir=models, default_dtype=torch.float64).merge_and_save(
            recipe_of(sd), output=out, save_dtype=torch.float32)
        return out

    ours, theirs = run(mecha_compat), run(sd_mecha)
    assert_same_tensors(ours, theirs, 1e-6)
    assert not torch.equal(ours[UNET_KEY], load(models / "Stable-diffusion" / "ghost.safetensors")[UNET_KEY])


def test_weighted_sum_and_split_by_hand(models):
    """Values without the oracle: (1 - alpha) a + alpha b, and a per-component alpha."""
    src = sources(models)
    out = merged(mecha_compat, models, SCRIPTS["basic_merge"][0])
    expected = 0.7 * src["ghost"][UNET_KEY].double() + 0.3 * src["dream"][UNET_KEY].double()
    torch.testing.assert_close(out[UNET_KEY].double(), expected, rtol=0, atol=1e-6)
    split = merged(mecha_compat, models, lambda sd: sd.weighted_sum(
        "ghost", "dream", alpha=sd.default("sd1", "txt", 0) | sd.default("sd1", "unet", 1)))
    assert torch.equal(split[TEXT_KEY], src["ghost"][TEXT_KEY])
    assert torch.equal(split[UNET_KEY], src["dream"][UNET_KEY])


def test_chained_weighted_sums_average_the_models(models):
    src = sources(models)
    out = merged(mecha_compat, models, SCRIPTS["n_average_chain"][0])
    expected = sum(src[n][UNET_KEY].double() for n in ("ghost", "dream", "pure")) / 3
    torch.testing.assert_close(out[UNET_KEY].double(), expected, rtol=0, atol=1e-6)


def test_tensor_sum_helper_is_copy_region_not_the_method():
    """0.0.25's top-level tensor_sum was copy_region (width 1 by default); the method of that name is another."""
    assert mecha_compat.tensor_sum is mecha_compat.copy_region
    node = mecha_compat.tensor_sum("a", "b")
    assert node.method.name == "tensor_sum" and node.hypers["width"] == 1.0


def test_outputs_land_where_0_0_25_wrote_them(own_models):
    """A bare name and a relative path with a folder go under the first models folder; .safetensors is added."""
    merger = mecha_compat.RecipeMerger(models_dir=own_models)
    recipe = mecha_compat.weighted_sum("Stable-diffusion/ghost", "Stable-diffusion/dream")
    merger.merge_and_save(recipe, output="Stable-diffusion/basic_merge")
    merger.merge_and_save(recipe, output="flat")
    assert (own_models / "Stable-diffusion" / "basic_merge.safetensors").is_file()
    assert (own_models / "flat.safetensors").is_file()
    mecha_compat.merge_and_save(recipe, own_models, "third")
    assert (own_models / "third.safetensors").is_file()


def test_merger_options_of_0_0_25(models):
    """tqdm= is the progress bar class, save_device= where a dict output's tensors go, save_dtype= the
    dtype of merged keys (None: the work dtype)."""
    class Bar:
        made: list[Bar] = []

        def __init__(self, **options: Any) -> None:
            self.options, self.updates, self.closed = options, 0, False
            Bar.made.append(self)

        def update(self, n: int = 1) -> None:
            self.updates += n

        def close(self) -> None:
            self.closed = True

    merger = mecha_compat.RecipeMerger(models_dir=models / "Stable-diffusion", default_dtype=torch.float32, tqdm=Bar)
    out: dict[str, torch.Tensor] = {}
    merger.merge_and_save(mecha_compat.weighted_sum("ghost", "dream"), output=out, save_device="cpu", save_dtype=None)
    [bar] = Bar.made
    assert bar.closed and bar.updates == len(out) and bar.options["desc"] == "Merging recipe"
    assert out[UNET_KEY].dtype == torch.float32 and out[UNET_KEY].device.type == "cpu"


def test_a_delta_recipe_is_refused_by_the_merger_as_in_0_0_25(models):
    merger = mecha_compat.RecipeMerger(models_dir=models / "Stable-diffusion")
    with pytest.raises(ValueError, match="model merge space, not delta"):
        merger.merge_and_save(mecha_compat.subtract("ghost", "dream"), output={})


def test_rotate_cache_is_filled_and_reused(models):
    cache: dict[Any, Any] = {}
    first = merged(mecha_compat, models, lambda sd: sd.rotate("ghost", "dream", alpha=0.3, cache=cache))
    assert cache
    again = merged(mecha_compat, models, lambda sd: sd.rotate("ghost", "dream", alpha=0.3, cache=cache))
    assert_same_tensors(again, first, 0)


def test_dropout_seed_is_random_unless_given(models, caplog):
    seeded = [merged(mecha_compat, models, lambda sd: sd.dropout("ghost", "dream", "pure", probability=0.5, seed=7))
              for _ in range(2)]
    assert_same_tensors(seeded[0], seeded[1], 0)
    recipe = mecha_compat.dropout("ghost", "dream", probability=0.5, alpha=0.5)
    assert recipe.inputs[1].hypers["seed"] == -1 and "seed=-1" in mecha_compat.serialize(recipe)
    with caplog.at_level("WARNING", logger="mecha"):
        draws = [merged(mecha_compat, models, lambda sd: recipe) for _ in range(2)]
    assert caplog.text.count("dropout: seed=-1 drew seed=") == 2
    assert any(not torch.equal(draws[0][k], draws[1][k]) for k in draws[0] if k.startswith("model.diffusion_model"))
