"""The diffusers/PEFT name of each layer of SD3's MMDiT, which SD3 LoRA trainers (diffusers, PEFT, OneTrainer,
SimpleTuner) write, next to the reference layout that checkpoints and kohya's sd-scripts use.

diffusers' ``SD3Transformer2DModel`` renames the layers of each joint block and splits each fused
q/k/v projection into three (``x_block.attn.qkv`` -> ``attn.to_q``/``to_k``/``to_v``, the context
stream's -> ``attn.add_q_proj``/...): a LoRA of one of them is a delta for one third of the fused rows.
Its ``AdaLayerNormContinuous`` layers (the final layer's modulation, and the context modulation of the
last block, whose context stream only feeds the attention) chunk their output as (scale, shift) where
the reference chunks (shift, scale), so their weights are stored with the two row halves swapped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Layers of a joint block: reference path below joint_blocks.N -> diffusers paths below transformer_blocks.N
# (three for a fused q/k/v projection, one row block each).
_BLOCK_LAYERS = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn.proj": ("attn.to_out.0",),
    "context_block.attn.proj": ("attn.to_add_out",),
    "x_block.mlp.fc1": ("ff.net.0.proj",),
    "x_block.mlp.fc2": ("ff.net.2",),
    "context_block.mlp.fc1": ("ff_context.net.0.proj",),
    "context_block.mlp.fc2": ("ff_context.net.2",),
    "x_block.adaLN_modulation.1": ("norm1.linear",),
    "context_block.adaLN_modulation.1": ("norm1_context.linear",),
}
_TOP_LEVEL = {
    "x_embedder.proj": ("pos_embed.proj",),
    "t_embedder.mlp.0": ("time_text_embed.timestep_embedder.linear_1",),
    "t_embedder.mlp.2": ("time_text_embed.timestep_embedder.linear_2",),
    "y_embedder.mlp.0": ("time_text_embed.text_embedder.linear_1",),
    "y_embedder.mlp.2": ("time_text_embed.text_embedder.linear_2",),
    "context_embedder": ("context_embedder",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),
    "final_layer.linear": ("proj_out",),
}
_JOINT = re.compile(r"^joint_blocks\.(\d+)\.(.+)$")


def diffusers_names(paths: Iterable[str]) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Module path below the MMDiT root -> (diffusers module paths, one per row block; whether the two
    row halves are swapped), for every layer among `paths` that has one."""
    paths = list(paths)
    full_context = {m.group(1) for m in map(_JOINT.match, paths) if m and m.group(2) == "context_block.attn.proj"}
    names: dict[str, tuple[tuple[str, ...], bool]] = {}
    for path in paths:
        if path in _TOP_LEVEL:
            names[path] = (_TOP_LEVEL[path], path == "final_layer.adaLN_modulation.1")
            continue
        match = _JOINT.match(path)
        if match and match.group(2) in _BLOCK_LAYERS:
            block, layer = match.groups()
            swap = layer == "context_block.adaLN_modulation.1" and block not in full_context
            names[path] = (tuple(f"transformer_blocks.{block}.{name}" for name in _BLOCK_LAYERS[layer]), swap)
    return names
