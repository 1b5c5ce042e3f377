"""mecha-sd1: the Stable Diffusion 1.x architecture, registered through ``mecha_architectures()``.

Its layout is composed from the shared builders of mecha-sd-blocks (CLIP, LDM UNet, VAE).
"""

from __future__ import annotations

from mecha_core import Architecture, hookimpl


@hookimpl
def mecha_architectures() -> list[Architecture]:
    from .sd1 import SD1
    return [SD1]
