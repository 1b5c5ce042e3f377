"""The KL autoencoder (VAE) of SD1/SDXL/SD3 in the LDM layout, under ``first_stage_model``.

Its keys pass through a merge unchanged (component ``vae``): merging VAEs weight by weight breaks
the latent space the UNet was trained on, so the first model's VAE is kept.
"""

from __future__ import annotations

import dataclasses

from mecha_core import KeySpec

from mecha_core.keyspecs import conv, nest, norm, passthrough


@dataclasses.dataclass(frozen=True)
class VaeConfig:
    """The autoencoder's channel counts; SD3's has 16 latent channels and no quantization convolutions."""

    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    latent_channels: int = 4
    image_channels: int = 3
    quant_conv: bool = True

    def shrunk(self, channels: int) -> VaeConfig:
        """The same structure with a small base width, for tests."""
        return dataclasses.replace(self, channels=channels)


def resnet_block(channels_in: int, channels_out: int) -> list[KeySpec]:
    specs = [*norm("norm1", channels_in), *conv("conv1", channels_out, channels_in, 3),
             *norm("norm2", channels_out), *conv("conv2", channels_out, channels_out, 3)]
    if channels_in != channels_out:
        specs += conv("nin_shortcut", channels_out, channels_in, 1)
    return specs


def middle(channels: int) -> list[KeySpec]:
    """Two residual blocks around a single-head self-attention made of 1x1 convolutions."""
    projections = [spec for name in ("q", "k", "v", "proj_out") for spec in conv(name, channels, channels, 1)]
    attention = [*norm("norm", channels), *projections]
    return [*nest("block_1", resnet_block(channels, channels)), *nest("attn_1", attention),
            *nest("block_2", resnet_block(channels, channels))]


def encoder(config: VaeConfig) -> list[KeySpec]:
    specs = conv("conv_in", config.channels, config.image_channels, 3)
    width = config.channels
    for level, mult in enumerate(config.channel_mult):
        for index in range(config.num_res_blocks):
            specs += nest(f"down.{level}.block.{index}", resnet_block(width, mult * config.channels))
            width = mult * config.channels
        if level != len(config.channel_mult) - 1:
            specs += nest(f"down.{level}.downsample", conv("conv", width, width, 3))
    return [*specs, *nest("mid", middle(width)), *norm("norm_out", width),
            *conv("conv_out", 2 * config.latent_channels, width, 3)]


def decoder(config: VaeConfig) -> list[KeySpec]:
    width = config.channels * config.channel_mult[-1]
    specs = [*conv("conv_in", width, config.latent_channels, 3), *nest("mid", middle(width))]
    for level in reversed(range(len(config.channel_mult))):
        for index in range(config.num_res_blocks + 1):
            out = config.channel_mult[level] * config.channels
            specs += nest(f"up.{level}.block.{index}", resnet_block(width, out))
            width = out
        if level:
            specs += nest(f"up.{level}.upsample", conv("conv", width, width, 3))
    return [*specs, *norm("norm_out", width), *conv("conv_out", config.image_channels, width, 3)]


def vae_keys(config: VaeConfig) -> list[KeySpec]:
    """Every key below ``first_stage_model``, passed through."""
    specs = [*nest("encoder", encoder(config)), *nest("decoder", decoder(config))]
    if config.quant_conv:
        doubled = 2 * config.latent_channels
        specs += [*conv("quant_conv", doubled, doubled, 1),
                  *conv("post_quant_conv", config.latent_channels, config.latent_channels, 1)]
    return passthrough(specs, "vae")
