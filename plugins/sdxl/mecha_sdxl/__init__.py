"""mecha-sdxl: the Stable Diffusion XL architecture, registered through ``mecha_architectures()``.

Its layout is composed from the shared builders of mecha-sd-blocks (CLIP-L, OpenCLIP-bigG, LDM
UNet, VAE).
"""

from __future__ import annotations

from mecha_core import Architecture, hookimpl


@hookimpl
def mecha_architectures() -> list[Architecture]:
    from .sdxl import SDXL
    return [SDXL]
