"""FLUX.1 (dev and schnell) as its files are shared.

The all-in-one checkpoint (ComfyUI's layout) holds CLIP-L and T5-XXL under ``text_encoders``, the
transformer under ``model.diffusion_model`` and a 16-channel VAE under ``vae``. Most files hold the
transformer alone, with the ``model.diffusion_model.`` prefix or without it (Black Forest Labs' own
release): the text encoders and the VAE are optional components (``Architecture.optional_components``)
and every transformer key accepts its unprefixed spelling as an alias. FLUX.1-schnell lacks
``guidance_in`` (optional keys).

Merged, named as mecha's ``sd3`` names them so one recipe habit serves both MMDiT families: ``unet``
(the transformer: ``double0``..``double18``, ``single0``..``single37``), ``txt`` (CLIP-L) and
``t5xxl``. Passed through unchanged: the VAE.
"""

from __future__ import annotations

import dataclasses

from mecha_core import Architecture, Component, KeySpec
from mecha_core.keyspecs import nest, tag
from mecha_core.random_models import generator
from mecha_sd_blocks.clip import ClipTextConfig, clip_text_keys
from mecha_sd_blocks.t5 import T5EncoderConfig, t5_encoder_keys
from mecha_sd_blocks.vae import VaeConfig, vae_keys

from .transformer import FluxConfig, transformer_keys

CLIP_L = ClipTextConfig(width=768, layers=12, mlp=3072, projection=None, position_ids=False)
T5XXL = T5EncoderConfig()
TRANSFORMER = FluxConfig(vec_in_dim=CLIP_L.width, context_in_dim=T5XXL.d_model)
VAE = VaeConfig(latent_channels=16, quant_conv=False)
PREFIX = "model.diffusion_model."
STORED_DTYPE = "bfloat16"  # the transformer's dtype in the released files; the rest is float32

COMPONENTS = (
    Component("txt", CLIP_L.block_names(), "CLIP ViT-L/14 text encoder; in0 also holds the embeddings, "
                                           "in11 the final norm"),
    Component("t5xxl", T5XXL.block_names(), "T5-XXL encoder; in0 also holds the shared embedding, in23 the final norm"),
    Component("unet", TRANSFORMER.block_names(), "the transformer: double0 also holds every input embedder "
                                                 "(img_in, time_in, vector_in, guidance_in, txt_in), single37 "
                                                 "the final layer"),
)
OPTIONAL_COMPONENTS = ("txt", "t5xxl", "vae")


def unprefixed_alias(specs: list[KeySpec]) -> list[KeySpec]:
    """The transformer's keys also answer to their name without ``model.diffusion_model.``."""
    return [dataclasses.replace(s, aliases=(s.name.removeprefix(PREFIX),)) for s in specs]


def keys(tiny: bool = False) -> list[KeySpec]:
    """Every key of an all-in-one FLUX.1-dev checkpoint; `tiny` shrinks the dimensions."""
    clip_l, t5, transformer, vae = CLIP_L, T5XXL, TRANSFORMER, VAE
    if tiny:
        clip_l, t5, vae = clip_l.shrunk(width=8), t5.shrunk(d_model=16), vae.shrunk(4)
        transformer = transformer.shrunk(hidden=16, vec_in_dim=clip_l.width, context_in_dim=t5.d_model)
    diffusion = tag(nest(PREFIX.rstrip("."), transformer_keys(transformer, "unet")), dtype=STORED_DTYPE)
    return [*nest("text_encoders.clip_l.transformer", clip_text_keys(clip_l, "txt")),
            *nest("text_encoders.t5xxl.transformer", t5_encoder_keys(t5, "t5xxl")),
            *unprefixed_alias(diffusion), *nest("vae", vae_keys(vae))]


FLUX = Architecture(
    name="flux",
    components=COMPONENTS,
    keys=keys,
    summary="FLUX.1 dev/schnell: all-in-one (CLIP-L, T5-XXL, transformer, VAE) or the transformer alone, "
            "with or without the model.diffusion_model. prefix",
    generate=generator(keys),
    optional_components=OPTIONAL_COMPONENTS,
    keep_spelling=True,
)
