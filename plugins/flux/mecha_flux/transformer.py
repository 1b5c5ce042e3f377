"""The FLUX.1 transformer in the layout of Black Forest Labs' reference implementation.

Two kinds of blocks: *double* blocks keep an image and a text stream side by side (each with its own
modulation, fused q/k/v with RMS-normed queries and keys, output projection and MLP) and attend
jointly; *single* blocks run the concatenated sequence through one fused linear layer (q/k/v and the
MLP's input) and one output layer (attention output and the MLP's output). Blocks are ``double0``..
``double18`` then ``single0``..``single37``. Shared layers: every input embedder (``img_in``,
``time_in``, ``vector_in``, ``guidance_in``, ``txt_in``) goes with ``double0``, the ``final_layer``
with the last single block, as SD3's MMDiT puts its embedders first and its final layer last.
``guidance_in`` exists only in guidance-distilled models (FLUX.1-dev): FLUX.1-schnell files lack it,
so its keys are optional.
"""

from __future__ import annotations

import dataclasses

from mecha_core import KeySpec
from mecha_core.keyspecs import linear, nest, param, tag, within


@dataclasses.dataclass(frozen=True)
class FluxConfig:
    """The transformer's widths (FLUX.1-dev and -schnell share them)."""

    double_blocks: int = 19
    single_blocks: int = 38
    hidden: int = 3072
    heads: int = 24
    mlp_ratio: int = 4
    in_channels: int = 64  # 16 latent channels in 2x2 patches
    vec_in_dim: int = 768  # CLIP-L's pooled output
    context_in_dim: int = 4096  # T5-XXL's width
    frequency_dim: int = 256  # sinusoidal timestep and guidance features

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def block_names(self) -> tuple[str, ...]:
        return (*(f"double{i}" for i in range(self.double_blocks)),
                *(f"single{i}" for i in range(self.single_blocks)))

    def shrunk(self, hidden: int, vec_in_dim: int, context_in_dim: int) -> FluxConfig:
        """The same structure (block counts) with every dimension small, for tests."""
        return dataclasses.replace(self, hidden=hidden, heads=2, in_channels=8, vec_in_dim=vec_in_dim,
                                   context_in_dim=context_in_dim, frequency_dim=8)


def qk_norm(head_dim: int) -> list[KeySpec]:
    """RMS norms of queries and keys: one ``scale`` per head dimension (the norm's weight)."""
    return within("norm", [param(f"{name}.scale", (head_dim,), role=name) for name in ("query_norm", "key_norm")])


def stream(config: FluxConfig, name: str) -> list[KeySpec]:
    """One stream (``img`` or ``txt``) of a double block."""
    hidden, mlp = config.hidden, config.mlp_ratio * config.hidden
    attention = [*linear("qkv", 3 * hidden, hidden), *qk_norm(config.head_dim), *linear("proj", hidden, hidden)]
    return [*within(f"{name}_mod", linear("lin", 6 * hidden, hidden)),
            *within(f"{name}_attn", attention),
            *within(f"{name}_mlp", [*linear("0", mlp, hidden), *linear("2", hidden, mlp)])]


def single_block(config: FluxConfig) -> list[KeySpec]:
    hidden, mlp = config.hidden, config.mlp_ratio * config.hidden
    return [*linear("linear1", 3 * hidden + mlp, hidden), *linear("linear2", hidden, hidden + mlp),
            *qk_norm(config.head_dim), *within("modulation", linear("lin", 3 * hidden, hidden))]


def mlp_embedder(name: str, hidden: int, in_features: int) -> list[KeySpec]:
    return within(name, [*linear("in_layer", hidden, in_features), *linear("out_layer", hidden, hidden)])


def transformer_keys(config: FluxConfig, component: str) -> list[KeySpec]:
    """Every key below ``diffusion_model``, with its block and class."""
    hidden, first, last = config.hidden, "double0", f"single{config.single_blocks - 1}"
    guidance = tag(mlp_embedder("guidance_in", hidden, config.frequency_dim), optional=True)
    embedders = [*linear("img_in", hidden, config.in_channels), *mlp_embedder("time_in", hidden, config.frequency_dim),
                 *mlp_embedder("vector_in", hidden, config.vec_in_dim), *guidance,
                 *linear("txt_in", hidden, config.context_in_dim)]
    specs = tag(embedders, blocks=(first,))
    for index in range(config.double_blocks):
        block = [*stream(config, "img"), *stream(config, "txt")]
        specs += tag(nest(f"double_blocks.{index}", block), blocks=(f"double{index}",))
    for index in range(config.single_blocks):
        specs += tag(nest(f"single_blocks.{index}", single_block(config)), blocks=(f"single{index}",))
    final = [*linear("adaLN_modulation.1", 2 * hidden, hidden), *linear("linear", config.in_channels, hidden)]
    specs += tag(within("final_layer", final), blocks=(last,))
    return tag(specs, component=component)
