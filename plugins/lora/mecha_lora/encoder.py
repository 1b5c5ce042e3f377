"""Saving a delta-space merge result as a LoRA: a truncated SVD of each layer's delta (or a LoKr).

For a layer's delta D (a conv weight flattened to ``(out, in * k * k)``), the best rank-r approximation
is U_r S_r V_r^T (Eckart-Young); ``up = U_r sqrt(S_r)`` and ``down = sqrt(S_r) V_r^T`` split the
singular values evenly so that neither factor under- or overflows in fp16. ``alpha`` is the module's
rank, so loaders scale by 1. A conv layer becomes a LoCon module (``down`` k x k, ``up`` 1 x 1); a fused
q/k/v projection is cut into its row slices, one module each, where the names split it (kohya's for
OpenCLIP's ``in_proj``; diffusers' for SD3's and FLUX's ``qkv`` and FLUX's ``linear1``, q/k/v/MLP).

With ``format="peft"`` the modules get the diffusers/PEFT names of the architecture (``unet.``,
``text_encoder.``, ``transformer.`` + the diffusers path, ``lora_A``/``lora_B``, no alpha: PEFT keeps it
in its adapter config, and scale 1 needs none). With ``algo="lokr"`` each module is the Kronecker product
``kron(w1, w2)`` nearest the delta, its sides split by LyCORIS's factorization (``factor``), ``w2`` cut
to the rank when LyCORIS would store it low-rank.

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


FORMATS, ALGORITHMS = ("kohya", "peft"), ("lora", "lokr")


def choice(options: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    """A save option that is one of `allowed` (the first by default)."""
    value = str(options.get(name) or allowed[0]).strip().lower()
    if value not in allowed:
        raise MechaError(f"saving as a LoRA: {name} {options.get(name)!r} is not one of {', '.join(allowed)} "
                         f"(--lora-{name} {allowed[-1]}, or save_options={{'{name}': '{allowed[-1]}'}})")
    return value


def factor_option(value: Any) -> int:
    """The LoKr ``factor`` save option: -1 (the most balanced split, the default) or a positive int."""
    text = "-1" if value is None else str(value).strip()
    if isinstance(value, bool) or not text.lstrip("-").isdigit() or (int(text) < 1 and int(text) != -1):
        raise MechaError(f"saving as a LoKr: factor {value!r} is not -1 or a positive whole number (--lora-factor 8)")
    return int(text)


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n), m <= n, m * n = dimension: LyCORIS's split of a dimension between LoKr's two factors.
    ``factor`` > 0 dividing `dimension` gives (factor, dimension / factor) in order; otherwise the
    divisor pair with the smallest sum whose smaller member is at most ``factor`` (-1: any)."""
    if factor > 0 and dimension % factor == 0:
        return tuple(sorted((factor, dimension // factor)))  # type: ignore[return-value]
    limit = dimension if factor < 0 else factor
    best = (1, dimension)
    for m in range(2, math.isqrt(dimension) + 1):
        if dimension % m == 0:
            if m > limit or m + dimension // m > sum(best):
                break
            best = (m, dimension // m)
    return best


def extras_usage(extras: Mapping[str, str]) -> str | None:
    """The command line's ``--lora-*`` flags that do not go together: ``--lora-factor`` is LoKr's."""
    if extras.get("factor") is not None and str(extras.get("algo") or "").strip().lower() != "lokr":
        return "--lora-factor needs --lora-algo lokr (it is the Kronecker factor of a LoKr)"
    return None


class LoraEncoder:
    """A :class:`mecha_core.OutputEncoder` writing each layer's delta as a LoRA module: kohya names (or
    diffusers/PEFT names, ``format="peft"``), a truncated SVD (or a LoKr, ``algo="lokr"``)."""

    def __init__(self, architecture: Architecture, options: Mapping[str, Any]) -> None:
        names = lora_names(architecture)
        if names is None:
            raise MechaError(f"cannot save as a LoRA: architecture {architecture.name!r} has no layer a LoRA can "
                             f"target")
        self.rank = rank_option(options.get("rank"))
        self.dtype = str(options.get("save_dtype") or "float16")
        self.format = choice(options, "format", FORMATS)
        self.algo = choice(options, "algo", ALGORITHMS)
        if options.get("factor") is not None and self.algo != "lokr":
            raise MechaError(f"saving as a LoRA: factor {options.get('factor')!r} is LoKr's, and the modules written "
                             f"are {self.algo}: give algo 'lokr' with it (--lora-algo lokr)")
        self.factor = factor_option(options.get("factor"))
        if self.format == "peft" and self.algo != "lora":
            raise MechaError("saving as a LoRA: --lora-format peft writes LoRA modules (lora_A/lora_B); a LoKr is "
                             "written with kohya's names")
        self.names = names.written(self.format)
        self.layout_rows = {key: architecture.key_specs[key].shape[0] for key in self.names}
        if self.format == "peft":
            self.metadata: dict[str, str] = lora_file_metadata(architecture, options.get("title"))
        else:
            args = {"conv_dim": str(self.rank), "conv_alpha": str(self.rank)}
            if self.algo == "lokr":
                args.update(algo="lokr", factor=str(self.factor))
            self.metadata = {"ss_network_module": "lycoris.kohya" if self.algo == "lokr" else "networks.lora",
                             "ss_network_dim": str(self.rank), "ss_network_alpha": str(self.rank),
                             "ss_network_args": json.dumps(args),
                             **lora_file_metadata(architecture, options.get("title"))}

    def _modules(self, key: str, shape: tuple[int, ...]) -> tuple[list[tuple[str, int, int]], bool] | None:
        """The key's modules as (name, first row, rows), and whether its row halves are swapped in them;
        None when no LoRA expresses it."""
        found = self.names.get(key)
        if found is None or len(shape) not in (2, 4):
            return None
        modules = []
        for name, target in found:
            rows = target.slice_of(shape[0], self.layout_rows[key])
            if rows is None:
                return None
            modules.append((name, *rows))
        return modules, found[0][1].swap

    def layout(self, key: str, shape: tuple[int, ...]) -> Layout:
        found = self._modules(key, shape)
        if found is None:
            return []
        layout: Layout = []
        for name, _, rows in found[0]:
            layout += [(f"{name}.{part}", tensor_shape, dtype) for part, tensor_shape, dtype in self._parts(rows, shape)]
        return layout

    def _parts(self, rows: int, shape: tuple[int, ...]) -> Layout:
        """(part, shape, dtype) of one module of `rows` rows of a layer of `shape`."""
        kernel = tuple(shape[2:])
        if self.algo == "lokr":
            (a, b), (c, d) = factorization(rows, self.factor), factorization(shape[1], self.factor)
            parts: Layout = [("lokr_w1", (a, c), self.dtype)]
            rank = self._lokr_rank(b, d, math.prod(kernel))
            if rank is None:
                return parts + [("lokr_w2", (b, d, *kernel), self.dtype)]
            return parts + [("lokr_w2_a", (b, rank), self.dtype), ("lokr_w2_b", (rank, d * math.prod(kernel)), self.dtype),
                            ("alpha", (), "float32")]
        rank = min(self.rank, rows, math.prod(shape[1:]))
        down, up = (rank, *shape[1:]), ((rows, rank, 1, 1) if kernel else (rows, rank))
        if self.format == "peft":  # PEFT keeps alpha in its adapter config: alpha = rank, scale 1
            return [("lora_A.weight", down, self.dtype), ("lora_B.weight", up, self.dtype)]
        return [("lora_down.weight", down, self.dtype), ("lora_up.weight", up, self.dtype), ("alpha", (), "float32")]

    def _lokr_rank(self, b: int, d: int, kernel: int) -> int | None:
        """The rank of LoKr's second factor, None when it is stored whole: as LyCORIS decides, whole when
        the rank is at least half its larger side."""
        return None if self.rank >= max(b, d) / 2 else min(self.rank, b, d * kernel)

    def encode(self, key: str, tensor: Any) -> list[Any]:
        import torch
        found = self._modules(key, tuple(tensor.shape))
        if found is None:
            return []
        modules, swap = found
        wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        matrix = tensor.to(wide).reshape(tensor.shape[0], -1)
        if swap:  # the names' layer holds the key's two row halves in the other order
            matrix = torch.roll(matrix, -(tensor.shape[0] // 2), 0)
        tensors = []
        for _, first, rows in modules:
            part = matrix[first:first + rows]
            tensors += self._lokr(key, part, tensor.shape) if self.algo == "lokr" else self._lora(key, part, tensor.shape)
        return tensors

    def _lora(self, key: str, matrix: Any, shape: tuple[int, ...]) -> list[Any]:
        import torch
        rows = matrix.shape[0]
        rank = min(self.rank, rows, matrix.shape[1])
        u, s, vh = _svd(key, matrix)
        root = s[:rank].sqrt()
        down = (root[:, None] * vh[:rank]).reshape(rank, *shape[1:])
        up = u[:, :rank] * root
        if len(shape) == 4:
            up = up.reshape(rows, rank, 1, 1)
        if self.format == "peft":
            return [down, up]
        return [down, up, torch.tensor(float(rank))]

    def _lokr(self, key: str, matrix: Any, shape: tuple[int, ...]) -> list[Any]:
        """The Kronecker product nearest the block (Van Loan and Pitsianis): the block rearranged so that
        ``kron(w1, w2)`` becomes the outer product of w1 and w2 flattened, whose best rank-1
        approximation gives both; w2 then cut to the rank by SVD when LyCORIS would store it so."""
        import torch
        kernel = math.prod(shape[2:])
        (a, b), (c, d) = factorization(matrix.shape[0], self.factor), factorization(shape[1], self.factor)
        rearranged = matrix.reshape(a, b, c, d * kernel).permute(0, 2, 1, 3).reshape(a * c, b * d * kernel)
        u, s, vh = _svd(key, rearranged)
        root = s[0].sqrt()
        w1, w2 = (u[:, 0] * root).reshape(a, c), (vh[0] * root).reshape(b, d * kernel)
        rank = self._lokr_rank(b, d, kernel)
        if rank is None:
            return [w1, w2.reshape(b, d, *shape[2:])]
        u2, s2, vh2 = _svd(key, w2)
        root2 = s2[:rank].sqrt()
        return [w1, u2[:, :rank] * root2, root2[:, None] * vh2[:rank], torch.tensor(float(rank))]


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
