"""Models stored as a folder of safetensors shards, the way Hugging Face ``transformers`` saves them.

A large model is split into ``model-00001-of-00004.safetensors`` ... and a
``model.safetensors.index.json`` whose ``weight_map`` says which shard holds each key. A folder (or
its index) opens as one :class:`ShardedFile`, which serves every key from its shard through the same
interface as a single :class:`~mecha_core.tensor_files.SafetensorsFile`, so the rest of mecha never
knows the model was split. A small model saved as one ``model.safetensors`` in its folder opens as
that file.

The index comes from the internet like the shards: it is checked before use. Shard names must be
plain file names in the folder (no path may lead outside it), every listed shard must exist, every
key must be in the shard the index names, and no key may be held by two shards (which of the two is
meant would be a guess). Keys a shard holds that the index does not list are not served, as
``transformers`` does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ModelFileError
from .tensor_files import CONVERT_HINT, PICKLE_SUFFIXES, SafetensorsFile, TensorFile, TensorInfo

INDEX_NAME = "model.safetensors.index.json"
INDEX_SUFFIX = ".safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_INDEX_BYTES = 100 * 1024 * 1024


def model_file_in(folder: Path) -> Path | None:
    """The file a model folder opens through: its shard index, else its single ``model.safetensors``."""
    for name in (INDEX_NAME, SINGLE_NAME):
        if (folder / name).is_file():
            return folder / name
    return None


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and model_file_in(path) is not None


def open_model(path: str | os.PathLike[str]) -> ShardedFile | SafetensorsFile:
    """A model folder or a shard index, opened."""
    path = Path(path)
    if path.is_dir():
        found = model_file_in(path)
        if found is None:
            raise ModelFileError(f"{path}: a folder holding neither {INDEX_NAME} nor {SINGLE_NAME}; give the "
                                 f"model's folder or one .safetensors file")
        path = found
    if path.name.endswith(INDEX_SUFFIX):
        return ShardedFile(path)
    return SafetensorsFile(path)


class ShardedFile:
    """The shards of one model, read as one file through their index."""

    def __init__(self, index_path: str | os.PathLike[str]) -> None:
        self.path = Path(index_path)
        self.folder = self.path.parent
        self.label = str(self.folder)
        weight_map = _read_index(self.path)
        self._shards: dict[str, SafetensorsFile] = {}
        try:
            for name in sorted(set(weight_map.values())):
                shard_path = self.folder / name
                if not shard_path.is_file():
                    raise ModelFileError(f"{shard_path}: missing; {self.path} lists it as a shard")
                self._shards[name] = SafetensorsFile(shard_path)
            self._owner = _owners(self.path, weight_map, self._shards)
        except BaseException:
            self.close()
            raise
        # keys in the order the shards store them: a model's natural order, as it was saved
        order = sorted(self._owner, key=lambda key: (self._owner[key].label, self._owner[key].tensors[key].start))
        self.tensors: dict[str, TensorInfo] = {key: self._owner[key].tensors[key] for key in order}
        first = next(iter(self._shards.values()), None)
        self.metadata: Mapping[str, str] = first.metadata if first is not None else {}
        self.file_size = sum(shard.file_size for shard in self._shards.values())

    @property
    def shard_paths(self) -> list[Path]:
        return [shard.path for shard in self._shards.values()]

    def check_unchanged(self) -> None:
        """Raise when a shard changed since it was opened (see SafetensorsFile.check_unchanged)."""
        for shard in self._shards.values():
            shard.check_unchanged()

    def read(self, name: str) -> Any:
        return self._owner[name].read(name)

    def read_flat(self, name: str, start: int, stop: int) -> Any:
        return self._owner[name].read_flat(name, start, stop)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()

    def __enter__(self) -> ShardedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardedFile({self.label!r}, {len(self._shards)} shards, {len(self.tensors)} tensors)"


def _read_index(path: Path) -> dict[str, str]:
    """The index's key -> shard file name map, checked."""
    def fail(problem: str) -> ModelFileError:
        return ModelFileError(f"{path}: not a valid shard index: {problem}")

    try:
        if path.stat().st_size > MAX_INDEX_BYTES:
            raise fail(f"larger than {MAX_INDEX_BYTES} bytes")
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read: {error.strerror or error}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise fail(f"not JSON ({error})") from None
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise fail('expected a JSON object with a "weight_map" object')
    weight_map = index["weight_map"]
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not _plain_name(shard):
            raise fail(f"key {key!r} is mapped to {shard!r}; expected the name of a .safetensors file in the "
                       f"same folder")
    return weight_map


def _plain_name(name: str) -> bool:
    """A file name inside the folder: no separator, no parent, no hidden or absolute path."""
    return (name.endswith(".safetensors") and not name.startswith(".") and "/" not in name and "\\" not in name
            and Path(name).name == name)


def _owners(index: Path, weight_map: Mapping[str, str], shards: Mapping[str, SafetensorsFile]) -> dict[str, SafetensorsFile]:
    """The shard serving each listed key; refuses a key missing from its shard or held by two."""
    holders: dict[str, SafetensorsFile] = {}
    for shard in shards.values():
        for key in shard.tensors:
            other = holders.get(key)
            if other is not None:
                raise ModelFileError(f"{index.parent}: key {key!r} is held by two shards, {other.path.name} and "
                                     f"{shard.path.name}; remove it from one of them")
            holders[key] = shard
    owners = {}
    for key, name in weight_map.items():
        shard = shards[name]
        if key not in shard.tensors:
            raise ModelFileError(f"{shard.path}: does not hold key {key!r}, which {index.name} places in it")
        owners[key] = shard
    return owners


def open_tensor_file(path: str | os.PathLike[str]) -> TensorFile:
    """Open a model file, a model folder or a shard index, refusing pickles before reading a byte of them.

    Here, above both kinds of file, rather than in :mod:`mecha_core.tensor_files`: the core's imports
    run one way."""
    suffix = Path(path).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelFileError(f"{path}: {suffix} files are pickles; {CONVERT_HINT}")
    if is_model_folder(Path(path)) or str(path).endswith(INDEX_SUFFIX):
        return open_model(path)
    return SafetensorsFile(path)
