"""Let glibc's allocator keep freed memory for reuse while ``mecha merge`` runs.

A merge allocates and frees buffers of a few MB to tens of MB thousands of times (each key's
inputs in the work dtype, the method's result, the cast for saving). By default glibc serves
buffers above an adaptive threshold with fresh ``mmap``s and trims freed heap memory back to the
system, so every buffer faults its pages in anew: on a LoRA bake, page faults cost as much system
time as the arithmetic (README, Speed and memory). Fixing the threshold at glibc's maximum (32 MiB)
and trimming only above 1 GiB keeps those buffers in the process for the next key. Peak private
memory stays that of the largest working set; the memory goes back to the system when the process
exits.

Only the CLI calls this: a library should not change its host process's allocator.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as described above; False where that is not possible (not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
