"""Stable Diffusion 1.x as A1111, ComfyUI and civitai ship it: one LDM-layout checkpoint holding the
CLIP-L text encoder, the UNet, the VAE and, in unpruned files, EMA weights and scheduler buffers.

Merged: ``txt`` (``cond_stage_model.transformer``) and ``unet`` (``model.diffusion_model``).
Passed through unchanged: the VAE (``vae``), ``position_ids``, the scheduler buffers (``scheduler``)
and the EMA copy of the UNet (``ema``; ``--drop ema`` leaves it out of the output).
"""

from __future__ import annotations

import dataclasses

from mecha_core import Architecture, Component, KeySpec
from mecha_core.keyspecs import nest, param, passthrough
from mecha_core.random_models import generator
from mecha_sd_blocks import PRUNED_COMPONENTS
from mecha_sd_blocks.clip import ClipTextConfig, clip_text_keys
from mecha_sd_blocks.schedule import scheduler_keys
from mecha_sd_blocks.unet import UNetConfig, unet_keys
from mecha_sd_blocks.vae import VaeConfig, vae_keys

TEXT_ENCODER = ClipTextConfig(width=768, layers=12, mlp=3072)
UNET = UNetConfig(model_channels=320, channel_mult=(1, 2, 4, 4), transformer_depth=(1, 1, 1, 0),
                  context_dim=TEXT_ENCODER.width)
VAE = VaeConfig()
TEXT_PREFIX = "cond_stage_model.transformer"
UNET_PREFIX = "model.diffusion_model"

COMPONENTS = (
    Component("txt", TEXT_ENCODER.block_names(),
              "CLIP ViT-L/14 text encoder; in0 also holds the embeddings, in11 the final norm"),
    Component("unet", UNET.block_names(),
              "UNet; time_embed goes with every block holding a residual block, out11 also holds the final out layers"),
)


def ema_keys(unet: list[KeySpec]) -> list[KeySpec]:
    """The EMA copy of the UNet: ``model_ema.`` + the UNet key below ``model.`` without dots
    (``model_ema.diffusion_modelinput_blocks00weight``); older files omit ``diffusion_model``."""
    specs = [param("model_ema.decay", ()), param("model_ema.num_updates", (), dtype="int32")]
    for spec in unet:
        path = spec.name.removeprefix(UNET_PREFIX + ".").replace(".", "")
        specs.append(KeySpec(f"model_ema.diffusion_model{path}", spec.shape, spec.dtype,
                             aliases=(f"model_ema.{path}",)))
    return passthrough(specs, "ema", optional=True)


def text_encoder_keys(config: ClipTextConfig) -> list[KeySpec]:
    """CLIP-L under ``cond_stage_model.transformer``; files saved with older
    transformers releases lack ``text_model.``, which is accepted as an alias."""
    specs = []
    for spec in nest(TEXT_PREFIX, clip_text_keys(config, "txt")):
        old = spec.name.replace(f"{TEXT_PREFIX}.text_model.", f"{TEXT_PREFIX}.")
        specs.append(dataclasses.replace(spec, aliases=(old,)) if old != spec.name else spec)
    return specs


def keys(tiny: bool = False) -> list[KeySpec]:
    """Every key of an SD1 checkpoint (optional ones included); `tiny` shrinks the dimensions."""
    text = TEXT_ENCODER.shrunk(width=8) if tiny else TEXT_ENCODER
    unet_config = UNET.shrunk(model_channels=8, context_dim=text.width) if tiny else UNET
    unet = nest(UNET_PREFIX, unet_keys(unet_config, "unet"))
    return [*text_encoder_keys(text), *unet, *nest("first_stage_model", vae_keys(VAE.shrunk(4) if tiny else VAE)),
            *scheduler_keys(tiny), *ema_keys(unet)]


STABILITY_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"  # the model spec's name of the LDM/SGM layout

SD1 = Architecture(
    name="sd1",
    components=COMPONENTS,
    keys=keys,
    summary="Stable Diffusion 1.x single-file checkpoint (LDM layout: CLIP-L, UNet, VAE, optional EMA)",
    generate=generator(keys, pruned=PRUNED_COMPONENTS),
    model_spec={"architecture": "stable-diffusion-v1", "implementation": STABILITY_IMPLEMENTATION,
                "resolution": "512x512"},
)
