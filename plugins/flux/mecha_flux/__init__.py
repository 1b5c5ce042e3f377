"""mecha-flux: the FLUX.1 architecture (dev and schnell), registered through ``mecha_architectures()``.

It composes the shared builders of mecha-sd-blocks (CLIP-L, T5-XXL, VAE) with its own transformer
(:mod:`mecha_flux.transformer`).
"""

from __future__ import annotations

from mecha_core import Architecture, hookimpl


@hookimpl
def mecha_architectures() -> list[Architecture]:
    from .flux import FLUX
    return [FLUX]
