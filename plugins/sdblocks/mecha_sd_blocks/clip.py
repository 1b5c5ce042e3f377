"""The CLIP text encoder in the Hugging Face ``CLIPTextModel`` layout (SD1's, SDXL's CLIP-L, SD3's CLIP-L/G).

Blocks are the encoder layers ``in0``..``in{N-1}``; the embeddings go with ``in0`` and the final norm
(and ``text_projection`` when the checkpoint has it) with the last layer's block, as in sd-mecha.
``position_ids`` is a buffer: it passes through unchanged.
"""

from __future__ import annotations

import dataclasses

from mecha_core import KeySpec

from mecha_core.keyspecs import linear, nest, norm, param, passthrough, tag, within


@dataclasses.dataclass(frozen=True)
class ClipTextConfig:
    """Dimensions of a CLIP text transformer and which extra tensors its checkpoint stores."""

    width: int = 768
    layers: int = 12
    mlp: int = 3072
    vocab: int = 49408
    positions: int = 77
    projection: int | None = None  # ``text_projection.weight`` (projection, width) next to ``text_model``
    position_ids: bool = True  # the int64 ``position_ids`` buffer (passes through)

    def block_names(self) -> tuple[str, ...]:
        return tuple(f"in{i}" for i in range(self.layers))

    def shrunk(self, width: int, vocab: int = 64, positions: int = 8) -> ClipTextConfig:
        """The same structure (layer count, extra tensors) with every dimension small, for tests."""
        return dataclasses.replace(self, width=width, mlp=4 * width, vocab=vocab, positions=positions,
                                   projection=width if self.projection else None)


def encoder_layer(width: int, mlp: int) -> list[KeySpec]:
    """One pre-norm transformer layer: self-attention with separate q/k/v, then an MLP."""
    attention = [spec for name in ("q_proj", "k_proj", "v_proj", "out_proj") for spec in linear(name, width, width)]
    return [*within("self_attn", attention), *norm("layer_norm1", width),
            *within("mlp", [*linear("fc1", mlp, width), *linear("fc2", width, mlp)]), *norm("layer_norm2", width)]


def clip_text_keys(config: ClipTextConfig, component: str) -> list[KeySpec]:
    """Every key below the encoder's ``transformer`` module (``text_model.*``, ``text_projection``)."""
    first, last = "in0", f"in{config.layers - 1}"
    embeddings = within("embeddings", [param("token_embedding.weight", (config.vocab, config.width)),
                                       param("position_embedding.weight", (config.positions, config.width))])
    specs = tag(embeddings, blocks=(first,))
    for index in range(config.layers):
        specs += tag(nest(f"encoder.layers.{index}", encoder_layer(config.width, config.mlp)), blocks=(f"in{index}",))
    specs += tag(norm("final_layer_norm", config.width), blocks=(last,))
    specs = nest("text_model", specs)
    if config.position_ids:
        specs += passthrough([param("text_model.embeddings.position_ids", (1, config.positions), dtype="int64")],
                             component, optional=True)
    if config.projection:
        specs += tag(linear("text_projection", config.projection, config.width, bias=False), blocks=(last,))
    return tag(specs, component=component)
