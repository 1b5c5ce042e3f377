"""A 0.0.x custom method: declared with ``@convert_to_recipe`` and annotations over 0.0.x's flag, registered
with the running plugin set by the declaration itself, callable from recipes and from other methods."""

from __future__ import annotations

from typing import TypeVar

import pytest
import torch

import mecha_compat as sd_mecha
import mecha_core as mc
from mecha_compat import Hyper
from mecha_compat.extensions.merge_method import LiftFlag, MergeSpace, convert_to_recipe

from .conftest import load

KEY = "model.diffusion_model.out.2.weight"
SameSpace = TypeVar("SameSpace", bound=LiftFlag[MergeSpace.BASE | MergeSpace.DELTA])


def declare():
    @convert_to_recipe
    def blend_towards_zero(
        a: torch.Tensor | LiftFlag[MergeSpace.BASE],
        b: torch.Tensor | LiftFlag[MergeSpace.BASE],
        *,
        alpha: Hyper = 0.5,
        beta: Hyper,
        **kwargs,
    ) -> torch.Tensor | LiftFlag[MergeSpace.BASE]:
        mixed = sd_mecha.weighted_sum.__wrapped__(a, b, alpha=alpha)
        return (1 - beta) * mixed

    return blend_towards_zero


def test_a_declared_method_is_registered_and_merges(models):
    method = declare()
    assert "blend_towards_zero" in mc.get_plugins().merge_methods
    out: dict[str, torch.Tensor] = {}
    sd_mecha.RecipeMerger(models_dir=models / "Stable-diffusion").merge_and_save(
        method("ghost", "dream", alpha=0.25, beta=0.5, device="cpu", dtype=torch.float64), output=out,
        save_dtype=torch.float32)
    ghost = load(models / "Stable-diffusion" / "ghost.safetensors")[KEY].double()
    dream = load(models / "Stable-diffusion" / "dream.safetensors")[KEY].double()
    torch.testing.assert_close(out[KEY].double(), 0.5 * (0.75 * ghost + 0.25 * dream), rtol=0, atol=1e-6)
    text = mc.serialize(method("a", "b", beta=0.1))
    assert 'merge "blend_towards_zero"' in text
    assert mc.deserialize(text).method.name == "blend_towards_zero"


def test_spaces_and_required_hyperparameters_are_read_from_the_0_0_x_declaration(plugins):
    method = declare()
    declared = method.__wrapped_method__
    assert [i.space for i in declared.inputs] == [mc.MergeSpace.WEIGHT, mc.MergeSpace.WEIGHT]
    with pytest.raises(TypeError, match="missing required keyword argument 'beta'"):
        method("a", "b")
    with pytest.raises(mc.RecipeError, match="must be in weight space"):
        method(mc.model("l", type="lora"), "b", beta=0.1)

    @convert_to_recipe
    def either(a: torch.Tensor | SameSpace, b: torch.Tensor | SameSpace, **kwargs) -> torch.Tensor | SameSpace:
        return a - b

    assert either.__wrapped_method__.signature() == "either(a: Same, b: Same) -> Same"


def test_register_false_builds_without_registering(plugins):
    @convert_to_recipe(register=False)
    def unlisted(a: torch.Tensor | LiftFlag[MergeSpace.DELTA], **kwargs) -> torch.Tensor | LiftFlag[MergeSpace.DELTA]:
        return a

    assert "unlisted" not in mc.get_plugins().merge_methods


def test_declarations_0_0_x_refused_say_why(plugins):
    with pytest.raises(TypeError, match="kwargs must be included"):
        @convert_to_recipe
        def no_kwargs(a: torch.Tensor | LiftFlag[MergeSpace.BASE]) -> torch.Tensor | LiftFlag[MergeSpace.BASE]:
            return a
