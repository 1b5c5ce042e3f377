"""sd-mecha 0.0.x's merger object, ``RecipeMerger``, and ``merge_and_save``, running mecha's merge.

0.0.25 behaviour kept: a relative output (``"name"``, ``"Stable-diffusion/name"``) is written under the
first models folder, ``.safetensors`` is added to a name without a suffix, ``output`` may be a dict to
fill, work precision defaults to float64 and save precision to float16, and a recipe whose result is
not in weight space is refused. ``tqdm`` is the progress bar class, made once per merge with
``total=None`` (mecha does not know the number of keys before it opens the models) and updated once a
key.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import mecha_core
from mecha_core import MergeSpace, RecipeNode

from .nodes import RecipeNodeOrPath, caches_of, path_to_node


class RecipeMerger:
    """Defaults kept between merges: models folders, work device and work dtype, the progress bar."""

    def __init__(self, *, models_dir: str | os.PathLike[str] | list[str | os.PathLike[str]] | None = None,
                 default_device: str = "cpu", default_dtype: Any = "float64", tqdm: type | None = None) -> None:
        if models_dir is None:
            dirs: list[Path] = []
        elif isinstance(models_dir, (list, tuple)):
            dirs = [Path(d).absolute() for d in models_dir if d is not None]
        else:
            dirs = [Path(models_dir).absolute()]
        self.models_dirs = dirs
        self.default_device = default_device
        self.default_dtype = default_dtype
        if tqdm is None:
            from tqdm import tqdm
        self.tqdm = tqdm

    def merge_and_save(self, recipe: RecipeNodeOrPath, *, output: MutableMapping[str, Any] | str | os.PathLike[str] = "merge",
                       fallback_model: Any = None, save_device: str | None = "cpu", save_dtype: Any = "float16",
                       threads: int | None = None, total_buffer_size: int | None = None) -> Any:
        """Merge `recipe` into `output`: a dict to fill, or a path (relative ones under the first models folder).

        `save_dtype` None saves in the work dtype, as 0.0.x did; `total_buffer_size` bounds, in bytes,
        what one worker holds for a chunk of an elementwise merge (mecha's ``memory_budget``).
        `save_device` is where the tensors of a dict output are put.
        """
        node = path_to_node(recipe)
        if node.space is not None and node.space is not MergeSpace.WEIGHT:
            raise ValueError(f"recipe should be in model merge space, not {node.space.value}")
        caches = caches_of(node)
        options: dict[str, Any] = dict(
            models_dir=[str(d) for d in self.models_dirs] or None, threads=threads, device=self.default_device,
            work_dtype=self.default_dtype, save_dtype=save_dtype if save_dtype is not None else self.default_dtype,
            fallback_model=path_to_node(fallback_model) if isinstance(fallback_model, (str, os.PathLike)) else fallback_model,
            memory_budget=total_buffer_size, cache=caches[0] if caches else None)
        bar = self.tqdm(total=None, desc="Merging recipe")
        try:
            if isinstance(output, MutableMapping):
                merged = mecha_core.merge(node, None, progress=lambda plan, written: bar.update(), **options)
                for key, tensor in merged.items():
                    output[key] = tensor.to(save_device) if save_device is not None else tensor
                return output
            return mecha_core.merge(node, self.output_path(output), progress=lambda plan, written: bar.update(),
                                    **options)
        finally:
            bar.close()

    def output_path(self, output: str | os.PathLike[str]) -> Path:
        """Where a path output goes: a relative one under the first models folder, with .safetensors added."""
        path = Path(output)
        if not path.is_absolute() and self.models_dirs:
            path = self.models_dirs[0] / path
        if not path.suffix:
            path = path.with_suffix(".safetensors")
        return path


def merge_and_save(recipe: RecipeNode, models_dir: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> Any:
    """0.0.x's one-call merge: ``RecipeMerger(models_dir=models_dir).merge_and_save(recipe, output=output_path)``."""
    return RecipeMerger(models_dir=models_dir).merge_and_save(recipe, output=output_path)

