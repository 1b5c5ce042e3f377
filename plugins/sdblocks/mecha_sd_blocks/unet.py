"""The latent-diffusion UNet (``openaimodel.UNetModel``) of SD1 and SDXL, in the LDM/SGM layout.

The network is described by its channel counts and depths; the keys follow from the same loop the
model's constructor runs. Blocks are the model's own: ``input_blocks.i`` is ``in{i}``,
``middle_block`` is ``mid``, ``output_blocks.i`` is ``out{i}``; the final ``out`` layers go with the
last output block.

Shared layers: the time embedding (``time_embed``) and, in SDXL, the label embedding (``label_emb``,
added to it) condition every residual block, so they belong to every block that holds one (all but
the first input block and the downsamplers). A block-wise value for them is the mean of the values
of those blocks, which is what sd-mecha did.
"""

from __future__ import annotations

import dataclasses

from mecha_core import KeySpec

from mecha_core.keyspecs import conv, linear, nest, norm, tag, within


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """The constructor arguments of the UNet that decide its parameter shapes."""

    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)  # per level; 0: no attention at that level
    middle_depth: int = 1
    context_dim: int = 768
    in_channels: int = 4
    out_channels: int = 4
    adm_in_channels: int | None = None  # SDXL's label embedding input (pooled text + size conditioning)
    linear_projection: bool = False  # SDXL: proj_in/proj_out are linear layers, SD1: 1x1 convolutions
    ff_mult: int = 4

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def shrunk(self, model_channels: int, context_dim: int, adm_in_channels: int | None = None) -> UNetConfig:
        """The same structure (levels, depths, block count) with small channel counts, for tests."""
        return dataclasses.replace(self, model_channels=model_channels, context_dim=context_dim,
                                   adm_in_channels=adm_in_channels if self.adm_in_channels else None)

    def block_names(self) -> tuple[str, ...]:
        """The blocks in their natural order: ``in0``.., ``mid``, ``out0``..."""
        count = len(self.channel_mult) * (self.num_res_blocks + 1)  # as many input as output blocks
        return (*(f"in{i}" for i in range(count)), "mid", *(f"out{i}" for i in range(count)))


def res_block(channels_in: int, channels_out: int, embedding: int) -> list[KeySpec]:
    """A residual block conditioned on the time embedding; a 1x1 skip convolution when widths differ."""
    specs = [*norm("in_layers.0", channels_in), *conv("in_layers.2", channels_out, channels_in, 3),
             *linear("emb_layers.1", channels_out, embedding),
             *norm("out_layers.0", channels_out), *conv("out_layers.3", channels_out, channels_out, 3)]
    if channels_in != channels_out:
        specs += conv("skip_connection", channels_out, channels_in, 1)
    return specs


def attention(channels: int, context: int) -> list[KeySpec]:
    """Multi-head attention with bias-free q/k/v projections; k and v read the context."""
    return [*linear("to_q", channels, channels, bias=False), *linear("to_k", channels, context, bias=False),
            *linear("to_v", channels, context, bias=False), *linear("to_out.0", channels, channels)]


def spatial_transformer(channels: int, depth: int, config: UNetConfig) -> list[KeySpec]:
    """Group norm, input projection, `depth` transformer blocks (self-attention, cross-attention,
    GEGLU MLP), output projection (linear in SDXL, 1x1 convolutions in SD1)."""
    inner = config.ff_mult * channels
    block = [*within("attn1", attention(channels, channels)), *within("attn2", attention(channels, config.context_dim)),
             *within("ff", [*linear("net.0.proj", 2 * inner, channels), *linear("net.2", channels, inner)]),
             *norm("norm1", channels), *norm("norm2", channels), *norm("norm3", channels)]
    def projection(name: str) -> list[KeySpec]:
        return linear(name, channels, channels) if config.linear_projection else conv(name, channels, channels, 1)

    specs = [*norm("norm", channels), *projection("proj_in"), *projection("proj_out")]
    for index in range(depth):
        specs += nest(f"transformer_blocks.{index}", block)
    return specs


def unet_keys(config: UNetConfig, component: str) -> list[KeySpec]:
    """Every key below ``diffusion_model``, with its block and class."""
    embed = config.time_embed_dim
    blocks: list[tuple[str, str, list[list[KeySpec]]]] = []  # (path, block name, modules in order)
    conditioned: list[str] = []  # blocks with a residual block, which read the time embedding

    def add(path: str, name: str, modules: list[list[KeySpec]], has_res_block: bool) -> None:
        blocks.append((path, name, modules))
        if has_res_block:
            conditioned.append(name)

    add("input_blocks.0", "in0", [conv("", config.model_channels, config.in_channels, 3, role="conv_in")], False)
    skip_widths = [config.model_channels]
    channels = config.model_channels
    last_level = len(config.channel_mult) - 1
    for level, mult in enumerate(config.channel_mult):
        for _ in range(config.num_res_blocks):
            modules = [res_block(channels, mult * config.model_channels, embed)]
            channels = mult * config.model_channels
            if config.transformer_depth[level]:
                modules.append(spatial_transformer(channels, config.transformer_depth[level], config))
            index = len(blocks)
            add(f"input_blocks.{index}", f"in{index}", modules, True)
            skip_widths.append(channels)
        if level != last_level:
            index = len(blocks)
            add(f"input_blocks.{index}", f"in{index}", [conv("op", channels, channels, 3)], False)
            skip_widths.append(channels)
    add("middle_block", "mid", [res_block(channels, channels, embed),
                                spatial_transformer(channels, config.middle_depth, config),
                                res_block(channels, channels, embed)], True)
    out_index = 0
    for level, mult in reversed(list(enumerate(config.channel_mult))):
        for step in range(config.num_res_blocks + 1):
            width = mult * config.model_channels
            modules = [res_block(channels + skip_widths.pop(), width, embed)]
            channels = width
            if config.transformer_depth[level]:
                modules.append(spatial_transformer(channels, config.transformer_depth[level], config))
            if level and step == config.num_res_blocks:
                modules.append(conv("conv", channels, channels, 3))
            add(f"output_blocks.{out_index}", f"out{out_index}", modules, True)
            out_index += 1

    specs: list[KeySpec] = []
    for path, name, modules in blocks:
        for position, module in enumerate(modules):
            specs += tag(nest(f"{path}.{position}", module), blocks=(name,))
    shared = tuple(conditioned)
    specs += tag([*linear("time_embed.0", embed, config.model_channels), *linear("time_embed.2", embed, embed)],
                 blocks=shared)
    if config.adm_in_channels:
        specs += tag(linear("label_emb.0.0", embed, config.adm_in_channels) + linear("label_emb.0.2", embed, embed),
                     blocks=shared)
    specs += tag(norm("out.0", config.model_channels) + conv("out.2", config.out_channels, config.model_channels, 3),
                 blocks=(blocks[-1][1],))
    return tag(specs, component=component)
