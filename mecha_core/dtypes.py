"""Names of tensor dtypes as safetensors headers, recipes and the CLI spell them.

Kept free of torch at import time so that reading a header or parsing a flag does not load torch.
"""

from __future__ import annotations

import functools

from typing import Any

from .errors import MechaError, suggest

# safetensors code -> (torch attribute name, item size in bytes)
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
TORCH_NAME_TO_CODE = {name: code for code, (name, _) in SAFETENSORS_DTYPES.items()}
FLOAT_NAMES = frozenset({"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"})

# what users may type for --work-dtype / --save-dtype
ALIASES = {
    "fp64": "float64", "float64": "float64", "f64": "float64", "double": "float64",
    "fp32": "float32", "float32": "float32", "f32": "float32", "float": "float32",
    "fp16": "float16", "float16": "float16", "f16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp8": "float8_e4m3fn", "fp8_e4m3fn": "float8_e4m3fn", "float8_e4m3fn": "float8_e4m3fn", "f8_e4m3": "float8_e4m3fn",
    "fp8_e4m3": "float8_e4m3fn", "e4m3fn": "float8_e4m3fn", "e4m3": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2", "float8_e5m2": "float8_e5m2", "f8_e5m2": "float8_e5m2", "e5m2": "float8_e5m2",
}
WORK_DTYPES = ("float64", "float32", "bfloat16", "float16")
SAVE_DTYPES = ("float64", "float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2")
# the largest finite value of each fp8 format: e4m3fn has no inf (torch turns an overflow into NaN),
# e5m2 overflows to inf; saving clamps to these instead
FP8_MAX = {"float8_e4m3fn": 448.0, "float8_e5m2": 57344.0}


def itemsize(code: str) -> int:
    return SAFETENSORS_DTYPES[code][1]


def torch_name(code: str) -> str:
    return SAFETENSORS_DTYPES[code][0]


def is_float_name(name: str) -> bool:
    return name in FLOAT_NAMES


def to_torch(name: str) -> Any:
    """The torch dtype for a torch-style name such as ``float16``."""
    import torch
    return getattr(torch, name)


def name_of(dtype: Any) -> str:
    """The torch-style name (``float16``) of a torch dtype or of a user's spelling (``fp16``)."""
    if isinstance(dtype, str):
        return parse(dtype, ALIASES.values())
    return str(dtype).removeprefix("torch.")


def parse(text: str, allowed: Any, what: str = "dtype") -> str:
    """A user's dtype spelling to a torch-style name, refusing what `allowed` does not contain."""
    name = ALIASES.get(text.strip().lower())
    allowed = tuple(dict.fromkeys(allowed))
    if name is None or name not in allowed:
        choices = [alias for alias, target in ALIASES.items() if target in allowed]
        raise MechaError(f"unknown {what} {text!r}; {suggest(text, choices, what=what)}")
    return name


def is_fp8(dtype: Any) -> bool:
    return str(dtype).removeprefix("torch.") in FP8_MAX


def bounds(tensor: Any) -> tuple[float, float]:
    """The smallest and largest value of a floating-point tensor, in one pass (NaN and inf propagate)."""
    import torch
    if tensor.element_size() == 1:  # float8: no min/max kernels on CPU; float32 holds every value
        tensor = widen(tensor, torch.float32)
    low, high = torch.aminmax(tensor.reshape(-1))
    return low.item(), high.item()


def widen(tensor: Any, dtype: Any) -> Any:
    """`tensor` in `dtype` (a new tensor for float8, else ``tensor.to(dtype)``).

    torch converts float8 one element at a time; a float8 tensor has only 256 distinct bit patterns,
    so it is converted here by looking each byte up in a table of their values (``index_select``),
    several times faster, with the same results, NaN and inf included. Every float8 value is exact
    in every wider float dtype."""
    import torch
    if tensor.element_size() != 1 or not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor.to(dtype=dtype)
    table = _float8_table(tensor.dtype, dtype, tensor.device)
    codes = tensor.reshape(-1).view(torch.uint8).to(torch.int32)
    return torch.index_select(table, 0, codes).reshape(tensor.shape)


@functools.cache
def _float8_table(float8: Any, dtype: Any, device: Any) -> Any:
    import torch
    return torch.arange(256, dtype=torch.uint8, device=device).view(float8).to(dtype)


# bits that are all set only in a float8 format's non-finite values: e4m3fn's NaN is S.1111.111 (it has
# no inf), e5m2's inf and NaN have the exponent 11111
_FLOAT8_NONFINITE_BITS = {"float8_e4m3fn": 0x7F, "float8_e5m2": 0x7C}


def float8_all_finite(tensor: Any) -> bool:
    """Whether a float8 tensor holds no NaN or inf, from its bits: no conversion (see :func:`widen`)."""
    import torch
    mask = _FLOAT8_NONFINITE_BITS[str(tensor.dtype).removeprefix("torch.")]
    if tensor.numel() == 0:
        return True
    return int((tensor.reshape(-1).view(torch.uint8) & mask).max()) < mask


def cast_for_save(tensor: Any, dtype: Any, known_bounds: tuple[float, float] | None = None) -> tuple[Any, int]:
    """`tensor` in the save dtype, and how many of its values were clamped to an fp8 format's
    finite range to get there (0 for the other dtypes, which keep their own overflow rules).
    `known_bounds` are the tensor's :func:`bounds` when the caller has them already.

    NaN and inf are not clamped: the merge's ``nonfinite`` option reports them."""
    name = str(dtype).removeprefix("torch.")
    limit = FP8_MAX.get(name)
    if limit is None or tensor.numel() == 0 or tensor.dtype == dtype:
        return tensor.to(dtype=dtype), 0
    import torch
    low, high = known_bounds or bounds(tensor)
    if not (low < -limit or high > limit):  # NaN compares false: left to the nonfinite check
        return tensor.to(dtype=dtype), 0
    wide = tensor if tensor.element_size() > 1 else widen(tensor, torch.float32)
    finite_over = (wide.abs() > limit) & wide.isfinite()
    clamped = int(finite_over.sum())
    return torch.where(finite_over, wide.clamp(-limit, limit), wide).to(dtype=dtype), clamped


def code_of(name: str) -> str:
    """The safetensors dtype code for a torch-style name."""
    return TORCH_NAME_TO_CODE[name]
