"""A model folder in the Hugging Face layout, written by hand for tests (no transformers needed)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import mecha_core as mc


def write_sharded(folder: Path, tensors: Mapping, groups: Sequence[Sequence[str]], *,
                  weight_map: Mapping[str, str] | None = None) -> Path:
    """Shards model-0000i-of-0000n.safetensors holding the keys of each group, and their index
    (`weight_map` replaces the true one, to build broken indexes)."""
    folder.mkdir(parents=True, exist_ok=True)
    true_map = {}
    for number, group in enumerate(groups, 1):
        name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        mc.save_tensors({key: tensors[key] for key in group}, folder / name, {"format": "pt"})
        true_map.update({key: name for key in group})
    index = {"metadata": {"total_size": 0}, "weight_map": dict(weight_map if weight_map is not None else true_map)}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder
