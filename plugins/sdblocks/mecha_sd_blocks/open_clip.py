"""The OpenCLIP ViT-bigG text encoder in its own layout, as SDXL checkpoints store it (``txt2``).

Attention is one fused ``in_proj_weight`` (3 x width rows: q, k, v) per layer. Blocks are the
residual blocks ``in0``..``in{N-1}``; the token and positional embeddings go with ``in0``, and
``ln_final``, ``text_projection`` and ``logit_scale`` with the last block, as in sd-mecha.
"""

from __future__ import annotations

import dataclasses

from mecha_core import KeySpec
from mecha_core.keyspecs import linear, nest, norm, param, tag, within


@dataclasses.dataclass(frozen=True)
class OpenClipTextConfig:
    """Dimensions of the OpenCLIP text transformer."""

    width: int = 1280
    layers: int = 32
    mlp: int = 5120
    vocab: int = 49408
    positions: int = 77
    projection: int = 1280

    def block_names(self) -> tuple[str, ...]:
        return tuple(f"in{i}" for i in range(self.layers))

    def shrunk(self, width: int, vocab: int = 64, positions: int = 8) -> OpenClipTextConfig:
        """The same structure with every dimension small, for tests."""
        return dataclasses.replace(self, width=width, mlp=4 * width, vocab=vocab, positions=positions, projection=width)


def residual_block(width: int, mlp: int) -> list[KeySpec]:
    """Pre-norm attention with a fused q/k/v projection, then a GELU MLP."""
    fused = [param("in_proj_weight", (3 * width, width), "in_proj"), param("in_proj_bias", (3 * width,), "in_proj")]
    return [*norm("ln_1", width), *within("attn", [*fused, *linear("out_proj", width, width)]), *norm("ln_2", width),
            *within("mlp", [*linear("c_fc", mlp, width), *linear("c_proj", width, mlp)])]


def open_clip_text_keys(config: OpenClipTextConfig, component: str) -> list[KeySpec]:
    """Every key below the encoder's ``model`` module, with its block and class."""
    last = f"in{config.layers - 1}"
    specs = tag([param("token_embedding.weight", (config.vocab, config.width)),
                 param("positional_embedding", (config.positions, config.width))], blocks=("in0",))
    for index in range(config.layers):
        specs += tag(nest(f"transformer.resblocks.{index}", residual_block(config.width, config.mlp)),
                     blocks=(f"in{index}",))
    specs += tag([*norm("ln_final", config.width), param("text_projection", (config.width, config.projection)),
                  param("logit_scale", ())], blocks=(last,))
    return tag(specs, component=component)
