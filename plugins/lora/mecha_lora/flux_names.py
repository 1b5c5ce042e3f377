"""The diffusers/PEFT name of each layer of the FLUX.1 transformer, which FLUX LoRA trainers other than
kohya's (diffusers, AI-Toolkit, SimpleTuner, PEFT) write, next to Black Forest Labs' layout that
checkpoints and kohya's sd-scripts use.

diffusers' ``FluxTransformer2DModel`` renames the layers of each block and splits the fused ones:

- a double block's ``img_attn.qkv`` (``txt_attn.qkv``) is ``attn.to_q``/``to_k``/``to_v``
  (``attn.add_q_proj``/...), three equal row blocks;
- a single block's ``linear1`` is ``attn.to_q``/``to_k``/``to_v`` then ``proj_mlp``: three row blocks as
  wide as the block's input (the hidden width, the layer's columns), then the MLP's rows, the rest;
- the final layer's modulation (``AdaLayerNormContinuous``) chunks its output as (scale, shift) where
  Black Forest Labs chunks (shift, scale), so its weight is stored with the two row halves swapped. The
  blocks' modulations (``AdaLayerNormZero``) keep Black Forest Labs' order.

So a LoRA module of a split layer is the delta of a slice of rows of the fused one: each name comes
with its (first row, rows), read off the layer's shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Layers of a double block: path below double_blocks.N -> diffusers paths below transformer_blocks.N
# (three for a fused q/k/v projection, one equal row block each).
_DOUBLE_LAYERS = {
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
}
# Layers of a single block, below single_blocks.N -> below single_transformer_blocks.N
_SINGLE_LAYERS = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
_TOP_LEVEL = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
    "final_layer.linear": "proj_out",
}
_SWAPPED = frozenset({"final_layer.adaLN_modulation.1"})
_BLOCK = re.compile(r"^(double|single)_blocks\.(\d+)\.(.+)$")

# a diffusers module name with the rows of the layer it stands for: (name, first row, rows)
Slice = tuple[str, int, int]


def diffusers_names(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[tuple[Slice, ...], bool]]:
    """Module path below the transformer's root -> (its diffusers module paths with the rows each stands
    for; whether the two row halves are swapped), for every layer among `shapes` (path -> weight shape)
    that has one."""
    names: dict[str, tuple[tuple[Slice, ...], bool]] = {}
    for path, shape in shapes.items():
        if path in _TOP_LEVEL:
            names[path] = (((_TOP_LEVEL[path], 0, shape[0]),), path in _SWAPPED)
            continue
        match = _BLOCK.match(path)
        if match is None:
            continue
        kind, block, layer = match.groups()
        table, prefix = (_DOUBLE_LAYERS, "transformer_blocks") if kind == "double" else \
            (_SINGLE_LAYERS, "single_transformer_blocks")
        if layer in table:
            paths = tuple(f"{prefix}.{block}.{name}" for name in table[layer])
            blocks = _row_blocks(layer, shape, len(paths))
            names[path] = (tuple((name, first, rows) for name, (first, rows) in zip(paths, blocks)), False)
    return names


def _row_blocks(layer: str, shape: tuple[int, ...], count: int) -> list[tuple[int, int]]:
    """(first row, rows) of each of a layer's `count` diffusers modules: equal blocks, except for a single
    block's ``linear1``, whose q, k and v are as wide as its input and whose MLP takes the rest."""
    if layer == "linear1":
        width = shape[1]
        return [(0, width), (width, width), (2 * width, width), (3 * width, shape[0] - 3 * width)]
    rows = shape[0] // count
    return [(index * rows, rows) for index in range(count)]
