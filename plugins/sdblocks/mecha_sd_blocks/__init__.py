"""mecha-sd-blocks: the structural builders shared by the diffusion architectures.

Text encoders (:mod:`.clip` CLIP, :mod:`.open_clip` OpenCLIP-bigG, :mod:`.t5` T5 v1.1), the KL
autoencoder (:mod:`.vae`), the latent-diffusion UNet (:mod:`.unet`) and the noise-schedule buffers
(:mod:`.schedule`). Each returns :class:`mecha_core.KeySpec` lists composed with
:mod:`mecha_core.keyspecs`, so an architecture plugin (mecha-sd1, mecha-sdxl, mecha-sd3, ...) builds
its layout from the network's structure instead of pasting a table. It registers no hook: it is a
library the architecture plugins depend on, so none of them depends on another architecture.
"""

from __future__ import annotations

PRUNED_COMPONENTS = ("ema", "scheduler")
"""Components whose optional keys a pruned SD checkpoint lacks (``generator(keys, pruned=...)``)."""
