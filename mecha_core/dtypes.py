"""Names of tensor dtypes as safetensors headers, recipes and the CLI spell them.

Kept free of torch at import time so that reading a header or parsing a flag does not load torch.
"""

from __future__ import annotations

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
    if tensor.element_size() == 1:  # float8: no min/max kernels on CPU; float16 holds every value
        tensor = tensor.to(torch.float16)
    low, high = torch.aminmax(tensor.reshape(-1))
    return low.item(), high.item()


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
    wide = tensor if tensor.element_size() > 1 else tensor.to(torch.float16)
    finite_over = (wide.abs() > limit) & wide.isfinite()
    clamped = int(finite_over.sum())
    return torch.where(finite_over, wide.clamp(-limit, limit), wide).to(dtype=dtype), clamped


def code_of(name: str) -> str:
    """The safetensors dtype code for a torch-style name."""
    return TORCH_NAME_TO_CODE[name]
