"""The tests' own reading of kohya LoRA names: which checkpoint key, and which of its rows, a module changes.

Written apart from mecha-lora's structural derivation: SD1's UNet by its fixed layout (three input and
three output blocks per level), SDXL's and SD3's by their path, OpenCLIP's q/k/v by row thirds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

RESNET = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
          "skip_connection": "conv_shortcut"}
OPEN_CLIP = {"attn.out_proj.weight": "self_attn_out_proj", "mlp.c_fc.weight": "mlp_fc1", "mlp.c_proj.weight": "mlp_fc2"}


def _inner(position: int, rest: str) -> str:
    return RESNET[rest] if position == 0 else rest.replace(".", "_")


def sd1_unet_name(path: str) -> str | None:
    """The diffusers name of an SD1 UNet layer (path below model.diffusion_model, without .weight)."""
    if m := re.match(r"input_blocks\.(\d+)\.(\d)\.(.+)$", path):
        level, index = divmod(int(m[1]) - 1, 3)
        if index == 2:
            return f"down_blocks_{level}_downsamplers_0_conv"
        kind = "resnets" if m[2] == "0" else "attentions"
        return f"down_blocks_{level}_{kind}_{index}_{_inner(int(m[2]), m[3])}"
    if m := re.match(r"middle_block\.(\d)\.(.+)$", path):
        kind = {"0": "resnets_0", "1": "attentions_0", "2": "resnets_1"}[m[1]]
        return f"mid_block_{kind}_{_inner(0 if kind.startswith('resnets') else 1, m[2])}"
    if m := re.match(r"output_blocks\.(\d+)\.(\d)\.(.+)$", path):
        level, index = divmod(int(m[1]), 3)
        if m[3] == "conv":
            return f"up_blocks_{level}_upsamplers_0_conv"
        kind = "resnets" if m[2] == "0" else "attentions"
        return f"up_blocks_{level}_{kind}_{index}_{_inner(int(m[2]), m[3])}"
    return None


def kohya_targets(arch: str, checkpoint: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, slice]]:
    """kohya module name -> (checkpoint key, the rows it changes) for the conv/linear layers of `arch`."""
    all_rows = slice(None)
    prefixes = {
        "sd1": {"cond_stage_model.transformer.": "lora_te_"},
        "sdxl": {"conditioner.embedders.0.transformer.": "lora_te1_", "model.diffusion_model.": "lora_unet_"},
        "sd3": {"text_encoders.clip_l.transformer.": "lora_te1_", "text_encoders.clip_g.transformer.": "lora_te2_",
                "text_encoders.t5xxl.transformer.": "lora_te3_", "model.diffusion_model.": "lora_unet_"},
    }[arch]
    targets = {}
    for key, tensor in checkpoint.items():
        if m := re.match(r"conditioner\.embedders\.1\.model\.transformer\.resblocks\.(\d+)\.(.+)$", key):
            layer = f"lora_te2_text_model_encoder_layers_{m[1]}_"
            if m[2] == "attn.in_proj_weight":
                width = tensor.shape[1]
                for index, name in enumerate("qkv"):
                    targets[f"{layer}self_attn_{name}_proj"] = (key, slice(index * width, (index + 1) * width))
            elif m[2] in OPEN_CLIP:
                targets[layer + OPEN_CLIP[m[2]]] = (key, all_rows)
            continue
        if not key.endswith(".weight") or tensor.dim() < 2:
            continue
        for root, prefix in prefixes.items():
            if key.startswith(root):
                targets[prefix + key[len(root):-len(".weight")].replace(".", "_")] = (key, all_rows)
        if arch == "sd1" and key.startswith("model.diffusion_model."):
            name = sd1_unet_name(key[len("model.diffusion_model."):-len(".weight")])
            if name:
                targets["lora_unet_" + name] = (key, all_rows)
    return targets


def composed(lora: Mapping[str, torch.Tensor], targets: Mapping[str, tuple[str, slice]],
             checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per checkpoint key, the delta the LoRA adds: up @ down * alpha / rank of each module, at its rows.
    Every module of the LoRA must have a target (KeyError otherwise)."""
    deltas: dict[str, torch.Tensor] = {}
    for module in sorted({name.split(".")[0] for name in lora}):
        key, rows = targets[module]
        down, up = lora[f"{module}.lora_down.weight"].double(), lora[f"{module}.lora_up.weight"].double()
        rank = down.shape[0]
        alpha = lora[f"{module}.alpha"].item() if f"{module}.alpha" in lora else rank
        delta = deltas.setdefault(key, torch.zeros(checkpoint[key].shape, dtype=torch.float64))
        delta.view(delta.shape[0], -1)[rows] += up.flatten(1) @ down.flatten(1) * (alpha / rank)
    return deltas
