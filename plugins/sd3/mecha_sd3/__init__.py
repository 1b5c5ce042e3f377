"""mecha-sd3: the Stable Diffusion 3 architecture, registered through ``mecha_architectures()``.

It composes the shared builders of mecha-sd-blocks (CLIP-L/G, T5-XXL, VAE) with its own MMDiT
(:mod:`mecha_sd3.mmdit`).
"""

from __future__ import annotations

from mecha_core import Architecture, hookimpl


@hookimpl
def mecha_architectures() -> list[Architecture]:
    from .sd3 import SD3
    return [SD3]
