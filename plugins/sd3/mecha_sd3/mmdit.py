"""The MMDiT of SD3 (joint text/image transformer) in the layout of its reference implementation.

Blocks are the joint blocks ``in0``..``in{N-1}``, each holding an image stream (``x_block``) and a
text stream (``context_block``); the last context block only produces keys for the attention
(no output projection or MLP). Shared layers: every embedder (``x_embedder``, ``pos_embed``,
``t_embedder``, ``y_embedder``, ``context_embedder``) goes with ``in0``, the ``final_layer`` with the
last block.
"""

from __future__ import annotations

import dataclasses

from mecha_core import KeySpec
from mecha_core.keyspecs import conv, linear, nest, param, tag, within


@dataclasses.dataclass(frozen=True)
class MMDiTConfig:
    """The MMDiT's widths; ``hidden`` is 64 x depth in SD3."""

    depth: int = 24
    hidden: int = 1536
    patch: int = 2
    in_channels: int = 16
    out_channels: int = 16
    pos_embed_max_size: int = 192  # positions on a side of the learned position grid
    pooled_dim: int = 2048  # CLIP-L + CLIP-G pooled projections
    context_dim: int = 4096  # T5 width
    frequency_dim: int = 256  # sinusoidal timestep features
    mlp_ratio: int = 4

    def block_names(self) -> tuple[str, ...]:
        return tuple(f"in{i}" for i in range(self.depth))

    def shrunk(self, hidden: int, pooled_dim: int, context_dim: int) -> MMDiTConfig:
        """The same structure with every dimension small, for tests."""
        return dataclasses.replace(self, hidden=hidden, pos_embed_max_size=4, pooled_dim=pooled_dim,
                                   context_dim=context_dim, frequency_dim=8)


def stream(hidden: int, mlp_ratio: int, pre_only: bool) -> list[KeySpec]:
    """One stream of a joint block: adaLN modulation (6 vectors, or 2 when it only feeds the attention),
    a fused q/k/v projection, and unless `pre_only` the attention output projection and an MLP."""
    modulation = linear("adaLN_modulation.1", (2 if pre_only else 6) * hidden, hidden)
    attention = linear("qkv", 3 * hidden, hidden)
    if pre_only:
        return [*modulation, *within("attn", attention)]
    mlp = [*linear("fc1", mlp_ratio * hidden, hidden), *linear("fc2", hidden, mlp_ratio * hidden)]
    return [*modulation, *within("attn", [*attention, *linear("proj", hidden, hidden)]), *within("mlp", mlp)]


def mmdit_keys(config: MMDiTConfig, component: str) -> list[KeySpec]:
    """Every key below ``diffusion_model``, with its block and class."""
    hidden, last = config.hidden, config.depth - 1

    def embedder(name: str, in_features: int) -> list[KeySpec]:
        return within(name, [*linear("mlp.0", hidden, in_features), *linear("mlp.2", hidden, hidden)])

    embedders = [*within("x_embedder", conv("proj", hidden, config.in_channels, config.patch)),
                 param("pos_embed", (1, config.pos_embed_max_size ** 2, hidden)),
                 *embedder("t_embedder", config.frequency_dim), *embedder("y_embedder", config.pooled_dim),
                 *linear("context_embedder", hidden, config.context_dim)]
    specs = tag(embedders, blocks=("in0",))
    for index in range(config.depth):
        block = [*within("x_block", stream(hidden, config.mlp_ratio, False)),
                 *within("context_block", stream(hidden, config.mlp_ratio, index == last))]
        specs += tag(nest(f"joint_blocks.{index}", block), blocks=(f"in{index}",))
    final = [*linear("adaLN_modulation.1", 2 * hidden, hidden),
             *linear("linear", config.patch ** 2 * config.out_channels, hidden)]
    specs += tag(within("final_layer", final), blocks=(f"in{last}",))
    return tag(specs, component=component)
