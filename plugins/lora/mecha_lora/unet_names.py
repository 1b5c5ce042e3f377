"""The diffusers name of each conv/linear layer of an LDM/SGM UNet, derived from the UNet's own structure.

kohya names SD1 LoRA layers after the diffusers ``UNet2DConditionModel`` (``down_blocks.0.resnets.1.conv1``)
while checkpoints use the LDM layout (``input_blocks.2.0.in_layers.2``). The two describe the same
network: LDM numbers its blocks flat, diffusers groups them by resolution level. The levels follow from
the modules the blocks hold, so the mapping is read off the checkpoint's key paths:

- an input block holding ``op`` is a level's downsampler and closes the level; the other input blocks
  hold a residual block (``resnets.j``) and maybe an attention (``attentions.j``, same ``j``);
- the middle block holds residual blocks and one attention in turn;
- an output block holding a bare ``conv`` ends with the level's upsampler and closes the level.

Inside a residual block the layers are renamed (``in_layers.2`` is ``conv1``); attentions keep their
inner names. ``input_blocks.0.0`` is ``conv_in``, ``time_embed`` ``time_embedding``, SDXL's ``label_emb``
``add_embedding`` and ``out.2`` ``conv_out``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Residual-block layers: LDM name -> diffusers name (the norms carry no LoRA and are left out).
_RESNET_LAYERS = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
                  "skip_connection": "conv_shortcut"}
_TOP_LEVEL = {"input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1",
              "time_embed.2": "time_embedding.linear_2", "label_emb.0.0": "add_embedding.linear_1",
              "label_emb.0.2": "add_embedding.linear_2", "out.2": "conv_out"}
_BLOCK = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)(?:\.(.*))?$")
_MIDDLE = re.compile(r"^middle_block\.(\d+)\.(.*)$")
RESNET, ATTENTION, DOWNSAMPLER, UPSAMPLER = "resnet", "attention", "downsampler", "upsampler"


def _kind(inner: str) -> str | None:
    """What module a block position holds, from the path of one of its layers below it."""
    head = inner.split(".", 1)[0]
    if head in ("in_layers", "out_layers", "emb_layers", "skip_connection"):
        return RESNET
    if head in ("proj_in", "proj_out", "norm", "transformer_blocks"):
        return ATTENTION
    return {"op": DOWNSAMPLER, "conv": UPSAMPLER}.get(inner)


def _inner_name(kind: str, inner: str) -> str | None:
    if kind == RESNET:
        return _RESNET_LAYERS.get(inner)
    if kind == ATTENTION:
        return inner
    return "conv"


def diffusers_names(paths: Iterable[str]) -> dict[str, str]:
    """Module path below the UNet root (``input_blocks.1.0.in_layers.2``) -> diffusers module path, for
    every conv/linear layer among `paths` that has one."""
    paths = list(paths)
    # (section, block index) -> {position: kind}, from every layer's path
    kinds: dict[tuple[str, int], dict[int, str]] = {}
    middle_kinds: dict[int, str] = {}
    for path in paths:
        match, middle = _BLOCK.match(path), _MIDDLE.match(path)
        if match and match.group(4) and (kind := _kind(match.group(4))):
            kinds.setdefault((match.group(1), int(match.group(2))), {})[int(match.group(3))] = kind
        elif middle and (kind := _kind(middle.group(2))):
            middle_kinds[int(middle.group(1))] = kind
    places = {**_places("input_blocks", "down_blocks", DOWNSAMPLER, kinds),
              **_places("output_blocks", "up_blocks", UPSAMPLER, kinds)}
    names = {}
    for path in paths:
        if path in _TOP_LEVEL:
            names[path] = _TOP_LEVEL[path]
            continue
        match, middle = _BLOCK.match(path), _MIDDLE.match(path)
        if match and match.group(4):
            place = places.get((match.group(1), int(match.group(2)), int(match.group(3))))
            inner = match.group(4)
        elif middle:
            place = _middle_place(int(middle.group(1)), middle_kinds)
            inner = middle.group(2)
        else:
            continue
        if place is None:
            continue
        renamed = _inner_name(place[1], inner)
        if renamed is not None:
            names[path] = f"{place[0]}.{renamed}"
    return names


def _places(section: str, diffusers_section: str, closing: str,
            kinds: dict[tuple[str, int], dict[int, str]]) -> dict[tuple[str, int, int], tuple[str, str]]:
    """(section, block, position) -> (diffusers module path, kind) for the input or output blocks."""
    places = {}
    level = resnet = 0
    for index in sorted(i for s, i in kinds if s == section):
        held = kinds[(section, index)]
        for position, kind in sorted(held.items()):
            if kind in (DOWNSAMPLER, UPSAMPLER):
                path = f"{diffusers_section}.{level}.{kind}s.0"
            else:
                path = f"{diffusers_section}.{level}.{kind}s.{resnet}"
            places[(section, index, position)] = (path, kind)
        if closing in held.values():
            level, resnet = level + 1, 0
        elif RESNET in held.values():
            resnet += 1
    return places


def _middle_place(position: int, kinds: dict[int, str]) -> tuple[str, str] | None:
    """The middle block alternates residual blocks and attentions: resnets.0, attentions.0, resnets.1."""
    kind = kinds.get(position)
    if kind not in (RESNET, ATTENTION):
        return None
    count = sum(1 for p, k in kinds.items() if p < position and k == kind)
    return f"mid_block.{kind}s.{count}", kind
