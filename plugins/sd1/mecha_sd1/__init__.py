"""mecha-sd1: the Stable Diffusion 1.x architecture, registered through ``mecha_architectures()``.

Its structural builders are public so that other architecture plugins reuse them rather than copy
them: :mod:`mecha_sd1.specs` (composing key specs), :mod:`mecha_sd1.clip` (CLIP text encoder),
:mod:`mecha_sd1.unet` (LDM UNet), :mod:`mecha_sd1.vae` (KL autoencoder) and
:mod:`mecha_sd1.generation` (random checkpoints, whole or streamed key by key).
"""

from __future__ import annotations

from mecha_core import Architecture, hookimpl


@hookimpl
def mecha_architectures() -> list[Architecture]:
    from .sd1 import SD1
    return [SD1]
