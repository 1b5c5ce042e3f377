"""Stable Diffusion 3 (medium) as ComfyUI's all-in-one checkpoint stores it: three text encoders under
``text_encoders``, the MMDiT under ``model.diffusion_model`` and a 16-channel VAE.

Merged: ``txt`` (CLIP-L), ``txt2`` (CLIP-G), ``t5xxl`` (T5-XXL) and ``unet`` (the MMDiT, named ``unet``
as in sd-mecha). Each encoder's ``logit_scale`` scalar goes with its last block, as SDXL's does.
Passed through unchanged: the VAE and the sampling sigmas (``scheduler``).

Files are shared in several packagings: with all three text encoders, without T5-XXL
(``sd3_medium_incl_clips``, the most downloaded), or the MMDiT alone (with or without the VAE). Every
part but the MMDiT is an optional component, so each of them is detected as ``sd3``.
"""

from __future__ import annotations

from mecha_core import Architecture, Component, KeySpec
from mecha_core.keyspecs import nest, param, passthrough, tag
from mecha_core.random_models import generator
from mecha_sd_blocks import PRUNED_COMPONENTS
from mecha_sd_blocks.clip import ClipTextConfig, clip_text_keys
from mecha_sd_blocks.schedule import TIMESTEPS, TINY_TIMESTEPS
from mecha_sd_blocks.t5 import T5EncoderConfig, t5_encoder_keys
from mecha_sd_blocks.vae import VaeConfig, vae_keys

from .mmdit import MMDiTConfig, mmdit_keys

CLIP_L = ClipTextConfig(width=768, layers=12, mlp=3072, projection=768, position_ids=False)
CLIP_G = ClipTextConfig(width=1280, layers=32, mlp=5120, projection=1280, position_ids=False)
T5XXL = T5EncoderConfig()
MMDIT = MMDiTConfig(depth=24, hidden=1536, pooled_dim=CLIP_L.width + CLIP_G.width, context_dim=T5XXL.d_model)
VAE = VaeConfig(latent_channels=16, quant_conv=False)

COMPONENTS = (
    Component("txt", CLIP_L.block_names(), "CLIP ViT-L/14 text encoder; in0 also holds the embeddings, "
                                           "in11 the final norm, text_projection and logit_scale"),
    Component("txt2", CLIP_G.block_names(), "OpenCLIP ViT-bigG text encoder (Hugging Face layout); in0 also holds the "
                                            "embeddings, in31 the final norm, text_projection and logit_scale"),
    Component("t5xxl", T5XXL.block_names(), "T5-XXL encoder; in0 also holds the shared embedding, in23 the final norm "
                                            "and logit_scale"),
    Component("unet", MMDIT.block_names(), "MMDiT joint blocks; in0 also holds every embedder, in23 the final layer"),
)


def text_encoder(name: str, component: str, specs: list[KeySpec], last_block: str) -> list[KeySpec]:
    """An encoder under ``text_encoders.<name>``: its ``transformer`` module and a ``logit_scale``."""
    scale = tag([param("logit_scale", ())], component=component, blocks=(last_block,))
    return nest(f"text_encoders.{name}", [*nest("transformer", specs), *scale])


def keys(tiny: bool = False) -> list[KeySpec]:
    """Every key of an SD3 checkpoint; `tiny` shrinks the dimensions."""
    clip_l, clip_g, t5, mmdit, vae = CLIP_L, CLIP_G, T5XXL, MMDIT, VAE
    if tiny:
        clip_l, clip_g, t5 = clip_l.shrunk(width=8), clip_g.shrunk(width=16), t5.shrunk(d_model=16)
        mmdit = mmdit.shrunk(hidden=16, pooled_dim=clip_l.width + clip_g.width, context_dim=t5.d_model)
        vae = vae.shrunk(4)
    sigmas = passthrough([param("model.model_sampling.sigmas", (TINY_TIMESTEPS if tiny else TIMESTEPS,))], "scheduler")
    return [*text_encoder("clip_l", "txt", clip_text_keys(clip_l, "txt"), f"in{clip_l.layers - 1}"),
            *text_encoder("clip_g", "txt2", clip_text_keys(clip_g, "txt2"), f"in{clip_g.layers - 1}"),
            *text_encoder("t5xxl", "t5xxl", t5_encoder_keys(t5, "t5xxl"), f"in{t5.layers - 1}"),
            *nest("model.diffusion_model", mmdit_keys(mmdit, "unet")), *sigmas,
            *nest("first_stage_model", vae_keys(vae))]


COMFYUI_IMPLEMENTATION = "https://github.com/comfyanonymous/ComfyUI"  # the model spec's name of the layout of this file

SD3 = Architecture(
    name="sd3",
    components=COMPONENTS,
    keys=keys,
    summary="Stable Diffusion 3 single-file checkpoint (ComfyUI layout: CLIP-L, CLIP-G, T5-XXL, MMDiT, VAE)",
    generate=generator(keys, pruned=PRUNED_COMPONENTS),
    model_spec={"architecture": "stable-diffusion-3-medium", "implementation": COMFYUI_IMPLEMENTATION,
                "resolution": "1024x1024"},
    optional_components=("txt", "txt2", "t5xxl", "vae", "scheduler"),
)
