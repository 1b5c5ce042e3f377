"""diffusers as the oracle of the layouts: mecha's FLUX.1 and SD3 key sets, as meta tensors of the real
shapes, converted by diffusers' own single-file converters, load into its transformers with
strict=True (every parameter present, none left over, every shape right). No memory is used: the
models are built on the meta device. Skipped when diffusers is not installed."""

from __future__ import annotations

import pytest
import torch

from mecha_flux.flux import FLUX
from mecha_sd3.sd3 import SD3

diffusers = pytest.importorskip("diffusers")
single_file = pytest.importorskip("diffusers.loaders.single_file_utils")

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)


def meta_transformer(arch, keep=lambda key: True) -> dict[str, torch.Tensor]:
    """The merged transformer keys of `arch` (component ``unet``) as meta tensors, as a file stores them."""
    return {name: torch.empty(spec.shape, device="meta") for name, spec in arch.key_specs.items()
            if spec.component == "unet" and keep(name)}


def load_strictly(model_class, config, converted) -> None:
    with torch.device("meta"):
        model = model_class(**config)
    model.load_state_dict(converted, strict=True, assign=True)


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
@pytest.mark.parametrize("prefix", [True, False], ids=["prefixed", "unprefixed"])
def test_flux_transformer_loads_into_diffusers(guidance, prefix):
    checkpoint = meta_transformer(FLUX, lambda key: guidance or ".guidance_in." not in key)
    if not prefix:
        checkpoint = {FLUX.key_specs[k].aliases[0]: v for k, v in checkpoint.items()}
    assert len(checkpoint) == (780 if guidance else 776)
    converted = single_file.convert_flux_transformer_checkpoint_to_diffusers(checkpoint)
    load_strictly(diffusers.FluxTransformer2DModel, {**FLUX_DEV, "guidance_embeds": guidance}, converted)


def test_sd3_transformer_loads_into_diffusers():
    checkpoint = meta_transformer(SD3)
    converted = single_file.convert_sd3_transformer_checkpoint_to_diffusers(checkpoint)
    load_strictly(diffusers.SD3Transformer2DModel, SD3_MEDIUM, converted)


def test_a_merged_flux_files_header_loads_into_diffusers(plugins, tmp_path):
    """The keys of a merge's output (transformer-only, unprefixed, fp8), from its header, at real shapes:
    the tiny merge gives the names, the architecture the real shapes of those names."""
    import mecha_core as mc
    from mecha_core import open_tensor_file
    from mecha_core.testing import write_model
    alone = {k.removeprefix("model.diffusion_model."): v.to(torch.float8_e4m3fn)
             for k, v in FLUX.generate(seed=1).items() if k.startswith("model.")}
    a = write_model(alone, tmp_path / "a.safetensors")
    b = write_model(FLUX.generate(seed=2), tmp_path / "b.safetensors")
    out = mc.merge(mc.weighted_sum(a, b), tmp_path / "out.safetensors", save_dtype="fp8")
    with open_tensor_file(out) as file:
        names = list(file.tensors)
        assert {info.dtype for info in file.tensors.values()} == {"F8_E4M3"}
    checkpoint = {name: torch.empty(FLUX.key_specs[FLUX.canonical(name)].shape, device="meta") for name in names}
    converted = single_file.convert_flux_transformer_checkpoint_to_diffusers(checkpoint)
    load_strictly(diffusers.FluxTransformer2DModel, FLUX_DEV, converted)
