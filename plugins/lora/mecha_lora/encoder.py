"""Saving a delta-space merge result as a kohya LoRA: a truncated SVD of each layer's delta.

For a layer's delta D (a conv weight flattened to ``(out, in * k * k)``), the best rank-r approximation
is U_r S_r V_r^T (Eckart-Young); ``up = U_r sqrt(S_r)`` and ``down = sqrt(S_r) V_r^T`` split the
singular values evenly so that neither factor under- or overflows in fp16. ``alpha`` is the module's
rank, so loaders scale by 1. A conv layer becomes a LoCon module (``down`` k x k, ``up`` 1 x 1); a fused
q/k/v projection is cut into its three row blocks, one module each, as kohya names them.

Only conv and linear layers have a LoRA form: biases, norms, embeddings (token, position, T5's relative
attention bias, SD3's ``pos_embed``), ``logit_scale`` and OpenCLIP's ``text_projection`` are left out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from mecha_core import Architecture, MechaError

from .naming import lora_names

Layout = list[tuple[str, tuple[int, ...], str]]


# kohya's ``ss_base_model_version`` (and ``ss_v2``) by the model-spec architecture of the base model
KOHYA_BASE_MODELS = {"stable-diffusion-v1": ("sd_v1", False), "stable-diffusion-xl-v1-base": ("sdxl_base_v1-0", False)}


def lora_file_metadata(architecture: Architecture, title: Any) -> dict[str, str]:
    """What LoRA loaders read beside ``ss_network_*``: kohya's base-model keys and output name, and the
    model spec's keys with kohya's adapter spelling of the architecture (``stable-diffusion-v1/lora``)."""
    metadata: dict[str, str] = {}
    spec = architecture.model_spec
    kohya = KOHYA_BASE_MODELS.get(spec.get("architecture", ""))
    if kohya is not None:
        metadata["ss_base_model_version"] = kohya[0]
        metadata["ss_v2"] = str(kohya[1])
    if title is not None:
        metadata["ss_output_name"] = str(title)
    if spec.get("architecture") and spec.get("implementation"):
        metadata["modelspec.architecture"] = f"{spec['architecture']}/lora"
    return metadata


def rank_option(value: Any) -> int:
    """The ``rank`` save option as a positive int (a string when it comes from ``--as-lora RANK``)."""
    text = str(value).strip() if value is not None else ""
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        given = "nothing" if value is None else repr(value)
        raise MechaError(f"saving as a LoRA needs a rank, a positive whole number (--as-lora 32, or "
                         f"save_options={{'rank': 32}}); got {given}")
    return int(text)


class LoraEncoder:
    """A :class:`mecha_core.OutputEncoder` writing each layer's delta as a kohya LoRA module."""

    def __init__(self, architecture: Architecture, options: Mapping[str, Any]) -> None:
        names = lora_names(architecture)
        if names is None:
            raise MechaError(f"cannot save as a LoRA: architecture {architecture.name!r} has no layer a LoRA can "
                             f"target")
        self.rank = rank_option(options.get("rank"))
        self.dtype = str(options.get("save_dtype") or "float16")
        self.names = names.kohya
        self.metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(self.rank),
                         "ss_network_alpha": str(self.rank),
                         "ss_network_args": json.dumps({"conv_dim": str(self.rank), "conv_alpha": str(self.rank)}),
                         **lora_file_metadata(architecture, options.get("title"))}

    def _modules(self, key: str, shape: tuple[int, ...]) -> tuple[tuple[str, ...], int, int] | None:
        """The key's module names, the rows of each and the rank they get; None when no LoRA expresses it."""
        names = self.names.get(key)
        if names is None or len(shape) not in (2, 4) or shape[0] % len(names):
            return None
        rows = shape[0] // len(names)
        return names, rows, min(self.rank, rows, math.prod(shape[1:]))

    def layout(self, key: str, shape: tuple[int, ...]) -> Layout:
        found = self._modules(key, shape)
        if found is None:
            return []
        names, rows, rank = found
        conv = len(shape) == 4
        down = (rank, *shape[1:]) if conv else (rank, shape[1])
        up = (rows, rank, 1, 1) if conv else (rows, rank)
        layout: Layout = []
        for name in names:
            layout += [(f"{name}.lora_down.weight", down, self.dtype), (f"{name}.lora_up.weight", up, self.dtype),
                       (f"{name}.alpha", (), "float32")]
        return layout

    def encode(self, key: str, tensor: Any) -> list[Any]:
        import torch
        found = self._modules(key, tuple(tensor.shape))
        if found is None:
            return []
        names, rows, rank = found
        wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        matrix = tensor.to(wide).reshape(tensor.shape[0], -1)
        tensors = []
        for block in range(len(names)):
            u, s, vh = _svd(key, matrix[block * rows:(block + 1) * rows])
            root = s[:rank].sqrt()
            down = (root[:, None] * vh[:rank]).reshape(rank, *tensor.shape[1:])
            up = u[:, :rank] * root
            if tensor.dim() == 4:
                up = up.reshape(rows, rank, 1, 1)
            tensors += [down, up, torch.tensor(float(rank))]
        return tensors


def _svd(key: str, matrix: Any) -> tuple[Any, Any, Any]:
    """U, S, V^T of a matrix. LAPACK's divide and conquer is several times faster on a tall matrix than on
    its wide transpose (a 1280 x 23040 conv delta: 20 s against 3.5 s), so a wide one is decomposed as such."""
    import torch
    wide = matrix.shape[0] < matrix.shape[1]
    try:
        u, s, vh = torch.linalg.svd(matrix.T if wide else matrix, full_matrices=False)
    except RuntimeError as error:  # a delta holding NaN or inf has no SVD
        raise MechaError(f"key {key!r}: cannot save as a LoRA, the SVD of its delta failed ({error}); check the "
                         f"inputs for NaN/inf values") from None
    return (vh.T, s, u.T) if wide else (u, s, vh)
