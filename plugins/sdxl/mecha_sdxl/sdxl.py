"""Stable Diffusion XL (base and its fine-tunes) in the SGM single-file layout.

Merged: ``txt`` (CLIP-L, ``conditioner.embedders.0.transformer``), ``txt2`` (OpenCLIP bigG,
``conditioner.embedders.1.model``) and ``unet`` (``model.diffusion_model``, with the label embedding
``label_emb`` grouped like ``time_embed``: with every block holding a residual block).
Passed through unchanged: the VAE, ``position_ids``, scheduler buffers and the prediction-type
markers some fine-tunes add (``v_pred``, ``ztsnr``, ``edm_vpred.*``; component ``scheduler``).

SDXL conditions on the penultimate layer of both text encoders, so files may lack the last layer
of each (and what follows it): those keys are optional.
"""

from __future__ import annotations

import dataclasses

from mecha_core import Architecture, Component, KeySpec
from mecha_core.keyspecs import nest, param, passthrough
from mecha_core.random_models import generator
from mecha_sd_blocks import PRUNED_COMPONENTS
from mecha_sd_blocks.clip import ClipTextConfig, clip_text_keys
from mecha_sd_blocks.open_clip import OpenClipTextConfig, open_clip_text_keys
from mecha_sd_blocks.schedule import scheduler_keys
from mecha_sd_blocks.unet import UNetConfig, unet_keys
from mecha_sd_blocks.vae import VaeConfig, vae_keys

TEXT_ENCODER = ClipTextConfig(width=768, layers=12, mlp=3072)
TEXT_ENCODER_2 = OpenClipTextConfig(width=1280, layers=32, mlp=5120, projection=1280)
SIZE_CONDITIONS = 6  # original size, crop offset, target size: two values each
SIZE_EMBEDDING = 256  # Fourier features per size value
UNET = UNetConfig(model_channels=320, channel_mult=(1, 2, 4), transformer_depth=(0, 2, 10), middle_depth=10,
                  context_dim=TEXT_ENCODER.width + TEXT_ENCODER_2.width,
                  adm_in_channels=TEXT_ENCODER_2.projection + SIZE_CONDITIONS * SIZE_EMBEDDING, linear_projection=True)
VAE = VaeConfig()

COMPONENTS = (
    Component("txt", TEXT_ENCODER.block_names(), "CLIP ViT-L/14 text encoder; in0 also holds the embeddings, "
                                                 "in11 the final norm"),
    Component("txt2", TEXT_ENCODER_2.block_names(), "OpenCLIP ViT-bigG text encoder; in0 also holds the embeddings, "
                                                    "in31 ln_final, text_projection and logit_scale"),
    Component("unet", UNET.block_names(), "UNet; time_embed and label_emb go with every block holding a residual "
                                          "block, out8 also holds the final out layers"),
)


def optional_last_layer(specs: list[KeySpec], last_block: str) -> list[KeySpec]:
    """Mark the last layer of a text encoder and what follows it as optional (SDXL never reads them)."""
    return [dataclasses.replace(s, optional=True) if s.blocks == (last_block,) else s for s in specs]


def prediction_markers() -> list[KeySpec]:
    """Scalars some v-prediction/zero-terminal-SNR fine-tunes add to tell UIs how to sample."""
    markers = [param("edm_vpred.sigma_max", ()), param("edm_vpred.sigma_min", ()),
               param("v_pred", (0,), dtype="int64"), param("ztsnr", (0,), dtype="int64")]
    return passthrough(markers, "scheduler", optional=True)


def keys(tiny: bool = False) -> list[KeySpec]:
    """Every key of an SDXL checkpoint (optional ones included); `tiny` shrinks the dimensions."""
    text, text2, unet, vae = TEXT_ENCODER, TEXT_ENCODER_2, UNET, VAE
    if tiny:
        text, text2 = text.shrunk(width=8), text2.shrunk(width=16)
        unet = unet.shrunk(model_channels=4, context_dim=text.width + text2.width,
                           adm_in_channels=text2.projection + SIZE_CONDITIONS * 4)
        vae = vae.shrunk(4)
    txt = optional_last_layer(clip_text_keys(text, "txt"), f"in{text.layers - 1}")
    txt2 = optional_last_layer(open_clip_text_keys(text2, "txt2"), f"in{text2.layers - 1}")
    return [*nest("conditioner.embedders.0.transformer", txt), *nest("conditioner.embedders.1.model", txt2),
            *nest("model.diffusion_model", unet_keys(unet, "unet")), *nest("first_stage_model", vae_keys(vae)),
            *scheduler_keys(tiny), *prediction_markers()]


STABILITY_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"  # the model spec's name of the LDM/SGM layout

SDXL = Architecture(
    name="sdxl",
    components=COMPONENTS,
    keys=keys,
    summary="Stable Diffusion XL single-file checkpoint (SGM layout: CLIP-L, OpenCLIP bigG, UNet, VAE)",
    generate=generator(keys, pruned=PRUNED_COMPONENTS),
    model_spec={"architecture": "stable-diffusion-xl-v1-base", "implementation": STABILITY_IMPLEMENTATION,
                "resolution": "1024x1024"},
)
