"""mecha-sd3: the Stable Diffusion 3 architecture, registered through ``mecha_architectures()``.

It reuses the CLIP and VAE builders of mecha-sd1 and adds the T5 encoder (:mod:`mecha_sd3.t5`) and
the MMDiT (:mod:`mecha_sd3.mmdit`).
"""

from __future__ import annotations

from mecha_core import Architecture, hookimpl


@hookimpl
def mecha_architectures() -> list[Architecture]:
    from .sd3 import SD3
    return [SD3]
