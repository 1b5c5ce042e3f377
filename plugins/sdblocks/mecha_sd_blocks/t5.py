"""The T5 v1.1 encoder (T5-XXL in SD3) in the Hugging Face ``T5EncoderModel`` layout (``t5xxl``).

Blocks are the encoder blocks ``in0``..``in{N-1}``; the shared token embedding goes with ``in0``
(as does the relative position bias, which only block 0 holds) and the final norm with the last block.
Classes keep the sub-layer index: ``layer.0`` is self-attention, ``layer.1`` the gated MLP, and each
has its own ``layer_norm`` (``layer_0_layer_norm``, ``layer_1_layer_norm``).
"""

from __future__ import annotations

import dataclasses

from mecha_core import KeySpec
from mecha_core.keyspecs import linear, nest, norm, param, tag, within


@dataclasses.dataclass(frozen=True)
class T5EncoderConfig:
    """Dimensions of a T5 v1.1 encoder (bias-free linear layers, RMS norms without bias)."""

    d_model: int = 4096
    d_ff: int = 10240
    heads: int = 64
    d_kv: int = 64
    layers: int = 24
    vocab: int = 32128
    buckets: int = 32

    def block_names(self) -> tuple[str, ...]:
        return tuple(f"in{i}" for i in range(self.layers))

    def shrunk(self, d_model: int) -> T5EncoderConfig:
        """The same structure with every dimension small, for tests."""
        return dataclasses.replace(self, d_model=d_model, d_ff=d_model * 5 // 2, heads=4, d_kv=d_model // 4,
                                   vocab=32, buckets=8)


def encoder_block(config: T5EncoderConfig, first: bool) -> list[KeySpec]:
    inner = config.heads * config.d_kv
    attention = [*(s for name in ("q", "k", "v") for s in linear(name, inner, config.d_model, bias=False)),
                 *linear("o", config.d_model, inner, bias=False)]
    if first:
        attention += [param("relative_attention_bias.weight", (config.buckets, config.heads))]
    gated = [spec for name in ("wi_0", "wi_1") for spec in linear(name, config.d_ff, config.d_model, bias=False)]
    mlp = [*gated, *linear("wo", config.d_model, config.d_ff, bias=False)]
    return [*within("layer.0", [*within("SelfAttention", attention), *norm("layer_norm", config.d_model, bias=False)]),
            *within("layer.1", [*within("DenseReluDense", mlp), *norm("layer_norm", config.d_model, bias=False)])]


def t5_encoder_keys(config: T5EncoderConfig, component: str) -> list[KeySpec]:
    """Every key below the encoder's ``transformer`` module, with its block and class."""
    specs = tag([param("shared.weight", (config.vocab, config.d_model))], blocks=("in0",))
    for index in range(config.layers):
        specs += tag(nest(f"encoder.block.{index}", encoder_block(config, index == 0)), blocks=(f"in{index}",))
    final = nest("encoder", norm("final_layer_norm", config.d_model, bias=False))
    specs += tag(final, blocks=(f"in{config.layers - 1}",))
    return tag(specs, component=component)
