"""mecha-sdxl: the Stable Diffusion XL architecture, registered through ``mecha_architectures()``.

It reuses the CLIP, UNet and VAE builders of mecha-sd1 and adds the OpenCLIP text encoder
(:mod:`mecha_sdxl.open_clip`).
"""

from __future__ import annotations

from mecha_core import Architecture, hookimpl


@hookimpl
def mecha_architectures() -> list[Architecture]:
    from .sdxl import SDXL
    return [SDXL]
