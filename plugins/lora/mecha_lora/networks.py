"""Where the networks a LoRA can target lie in an architecture's keys, found from the key names alone.

A LoRA names its layers relative to one network (a text encoder, a UNet, an MMDiT, a FLUX transformer),
whatever file layout the checkpoint uses around it. Each merge component of an architecture is searched for the
telltale module path of a known network; the part of the key before it is the network's *root*
(``cond_stage_model.transformer.`` for SD1's CLIP). Nothing here depends on a particular
architecture plugin: any architecture built from these networks gets LoRA support.
"""

from __future__ import annotations

import dataclasses
import re

from mecha_core import Architecture, KeySpec

CLIP = "clip"  # Hugging Face CLIPTextModel (text_model.encoder.layers.N...)
OPEN_CLIP = "open_clip"  # OpenCLIP text transformer (transformer.resblocks.N..., fused q/k/v)
T5 = "t5"  # Hugging Face T5EncoderModel (encoder.block.N.layer...)
LDM_UNET = "ldm_unet"  # the LDM/SGM UNet (input_blocks, middle_block, output_blocks)
MMDIT = "mmdit"  # SD3's MMDiT in the reference layout (joint_blocks.N.x_block / context_block)
FLUX = "flux"  # FLUX.1's transformer in Black Forest Labs' layout (double_blocks.N, single_blocks.N)
TEXT_ENCODERS = (CLIP, OPEN_CLIP, T5)

# The module path that gives each network away; group 1 is the root in front of it.
_SIGNATURES = (
    (CLIP, re.compile(r"^(.*?)text_model\.encoder\.layers\.\d+\.")),
    (OPEN_CLIP, re.compile(r"^(.*?)transformer\.resblocks\.\d+\.")),
    (T5, re.compile(r"^(.*?)encoder\.block\.\d+\.layer\.")),
    (LDM_UNET, re.compile(r"^(.*?)input_blocks\.\d+\.")),
    (MMDIT, re.compile(r"^(.*?)joint_blocks\.\d+\.")),
    (FLUX, re.compile(r"^(.*?)double_blocks\.\d+\.")),
)


@dataclasses.dataclass(frozen=True)
class Network:
    """One network of an architecture: its kind, its merge component, its root and its merged keys."""

    kind: str
    component: str
    root: str
    specs: tuple[KeySpec, ...]

    def relative(self, spec: KeySpec) -> str:
        """The key's path inside the network (``text_model.encoder.layers.0.mlp.fc1.weight``)."""
        return spec.name[len(self.root):]


def find_networks(architecture: Architecture) -> list[Network]:
    """The recognisable networks of an architecture, in the order of its components."""
    found = []
    for component in architecture.components:
        specs = [s for s in architecture.key_specs.values() if s.merged and s.component == component.name]
        for kind, signature in _SIGNATURES:
            match = next((m for m in map(signature.match, (s.name for s in specs)) if m), None)
            if match is not None:
                root = match.group(1)
                found.append(Network(kind, component.name, root, tuple(s for s in specs if s.name.startswith(root))))
                break
    return found
