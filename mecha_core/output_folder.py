"""Writing a merge as a Hugging Face model folder: safetensors shards, their index, and the model's
config and tokenizer files, appearing all at once.

Which key goes to which shard, at which offset, is decided up front by :func:`plan_shards`, from
the layout alone, and kept apart from the writing, so that a merge spread over several machines can
hand out whole shards. Shards are filled in the order of the layout (a model's natural order, layer
after layer), a new one starting when the next key would pass ``max_shard_size``; names follow
``transformers`` (``model-00001-of-00004.safetensors``, or one ``model.safetensors`` without an index
when everything fits in one).

Each shard is an :class:`~mecha_core.output_file.OutputFile` inside a temporary folder next to the
target, opened at its first write and finished as soon as its last byte is written, so only the
shards being filled hold writer buffers. The folder is renamed into place only once every shard, the
index and the copied files are on disk. An existing folder at the target stays untouched until then;
it is replaced only when it is empty or a model folder itself (it holds ``config.json`` and weights),
never a folder of other things.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import dtypes
from .errors import MechaError
from .output_file import TEMP_SUFFIX, OutputFile, fsync_folder, mark_committed, plan_layout
from .sharded_files import INDEX_NAME, SINGLE_NAME, model_file_in

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # transformers' default "5GB"
CONFIG_NAME = "config.json"
# what transformers and tokenizers save beside the weights, copied from the model the output derives from
COMPANION_NAMES = ("generation_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                   "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json", "preprocessor_config.json")
COMPANION_PREFIXES = ("tokenizer",)
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}

Entry = tuple[str, str, tuple[int, ...]]  # name, torch dtype name, shape


def parse_size(value: int | str) -> int:
    """A size in bytes from ``5000000``, ``"5GB"`` (10**9, as transformers counts), ``"2GiB"``, ``"500MB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", value.upper())
        if not found or found.group(2) not in UNITS:
            raise MechaError(f"cannot read the size {value!r}; write it as 5GB, 500MB, 2GiB or a number of bytes")
        size = int(float(found.group(1)) * UNITS[found.group(2)])
    else:
        raise MechaError(f"a size must be a number of bytes or text such as '5GB', got {type(value).__name__}")
    if size < 1:
        raise MechaError(f"the maximum shard size must be at least 1 byte, got {value!r}")
    return size


def is_folder_output(output: str | os.PathLike[str], max_shard_size: int | str | None) -> bool:
    """Whether `output` names a model folder: it ends with a path separator, is an existing folder,
    or a shard size is given for a name without ``.safetensors``."""
    text = os.fspath(output)
    if text.endswith(("/", os.sep)):
        return True
    if text.endswith(".safetensors"):
        return False
    return Path(text).is_dir() or max_shard_size is not None


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard: its file name and its tensors, each with its byte range in the data section."""

    file_name: str
    entries: tuple[Entry, ...]
    layout: tuple[tuple[str, str, tuple[int, ...], int, int], ...]

    @property
    def data_size(self) -> int:
        return self.layout[-1][4] if self.layout else 0


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Every shard of an output folder, decided before a tensor is computed."""

    shards: tuple[Shard, ...]
    total_size: int  # bytes of tensor data, the index's metadata.total_size

    @property
    def weight_map(self) -> dict[str, str]:
        return {name: shard.file_name for shard in self.shards for name, _, _ in shard.entries}

    def index(self) -> dict[str, Any]:
        """The ``model.safetensors.index.json`` content."""
        return {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}


def plan_shards(entries: Iterable[Entry], max_shard_size: int) -> ShardPlan:
    """Fill shards in order, each up to `max_shard_size` bytes of tensors (a larger key gets its own)."""
    groups: list[list[Entry]] = [[]]
    filled = total = 0
    for name, dtype_name, shape in entries:
        size = dtypes.itemsize(dtypes.code_of(dtype_name))
        for dim in shape:
            size *= dim
        if groups[-1] and filled + size > max_shard_size:
            groups.append([])
            filled = 0
        groups[-1].append((name, dtype_name, tuple(shape)))
        filled += size
        total += size
    count = len(groups)
    shards = []
    for number, group in enumerate(groups, 1):
        file_name = SINGLE_NAME if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"
        shards.append(Shard(file_name, tuple(group), tuple(plan_layout(group))))
    return ShardPlan(tuple(shards), total)


class OutputFolder:
    """A model folder being written; use as a context manager, :meth:`write` results, then :meth:`commit`.

    `companions_from` is the folder whose ``config.json``, generation config and tokenizer files are
    copied; `config_updates` are set in the copied ``config.json`` (``torch_dtype``...).
    """

    def __init__(self, path: str | os.PathLike[str], entries: Iterable[Entry], metadata: Mapping[str, str], *,
                 inputs: Iterable[str | os.PathLike[str]] = (), max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
                 companions_from: Path | None = None, config_updates: Mapping[str, Any] | None = None) -> None:
        self.path = Path(os.path.realpath(path))
        self.plan = plan_shards(entries, max_shard_size)
        self.metadata = {"format": "pt", **metadata}
        self.companions_from = companions_from
        self.config_updates = dict(config_updates or {})
        self.total_size = self.plan.total_size
        self._check_target(list(inputs))
        self._shard_of = {name: i for i, shard in enumerate(self.plan.shards) for name, _, _ in shard.entries}
        self._open: dict[int, OutputFile] = {}
        self._written = [0] * len(self.plan.shards)
        self._done = [False] * len(self.plan.shards)
        self._lock = threading.Lock()
        self._temp: Path | None = None

    def _check_target(self, inputs: Sequence[str | os.PathLike[str]]) -> None:
        if not self.path.parent.is_dir():
            raise MechaError(f"the folder {str(self.path.parent)!r} holding the output does not exist; create it first")
        if self.path.exists() and not self.path.is_dir():
            raise MechaError(f"output {str(self.path)!r} exists and is not a folder; choose another output name")
        if self.path.is_dir() and any(self.path.iterdir()) and not _is_model_folder(self.path):
            raise MechaError(f"output folder {str(self.path)!r} exists and holds other things than a model; "
                             f"choose another output name (only an empty or a model folder is replaced)")
        for source in inputs:
            resolved = Path(os.path.realpath(source))
            if resolved == self.path or self.path in resolved.parents:
                raise MechaError(f"refusing to write the output over the input {str(source)!r}; choose another "
                                 f"output name")

    def __enter__(self) -> OutputFolder:
        try:
            self._temp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=TEMP_SUFFIX, dir=self.path.parent))
        except OSError as error:
            raise MechaError(f"cannot create a folder in {str(self.path.parent)!r}: {error.strerror}") from None
        try:
            free = shutil.disk_usage(self._temp).free
        except OSError:
            free = None
        if free is not None and free < self.total_size:
            self.abort()
            raise MechaError(f"not enough disk space in {str(self.path.parent)!r} for the "
                             f"{self.total_size / 1e9:.2f} GB output")
        return self

    def write(self, name: str, tensor: Any, start_element: int = 0) -> None:
        """Write a contiguous CPU tensor (or the part of one starting at `start_element`) into its shard."""
        index = self._shard_of[name]
        out = self._shard(index)
        out.write(name, tensor, start_element)
        with self._lock:
            self._written[index] += tensor.numel() * tensor.element_size()
            complete = self._written[index] >= self.plan.shards[index].data_size and not self._done[index]
            if complete:
                self._done[index] = True
                out = self._open.pop(index)
        if complete:  # every byte of the shard is written: finish it now, freeing its writer
            _finish(out)

    @property
    def temporary_folder(self) -> Path:
        """Where the shards are written until the folder is committed (while the output is open)."""
        if self._temp is None:
            raise MechaError(f"{self.path}: the output was closed")
        return self._temp

    def adopt_shards(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        """Take every shard as complete, written by others (an executor's workers) at `paths`, one
        per shard in order, inside :attr:`temporary_folder`; what their killed attempts left there goes."""
        folder = self.temporary_folder
        expected = [folder / shard.file_name for shard in self.plan.shards]
        if [Path(p) for p in paths] != expected:
            raise MechaError(f"{self.path}: the shards to adopt are not the planned ones in {folder}")
        with self._lock:
            if self._open:
                raise MechaError(f"{self.path}: shards were also written here; an executor writes all or none")
            self._done = [True] * len(self.plan.shards)
        for item in folder.iterdir():
            if item.name.endswith(TEMP_SUFFIX) and item.is_file():
                item.unlink()

    def _shard(self, index: int) -> OutputFile:
        with self._lock:
            out = self._open.get(index)
            if out is None:
                if self._temp is None or self._done[index]:
                    raise MechaError(f"{self.path}: the output was closed")
                shard = self.plan.shards[index]
                out = OutputFile(self._temp / shard.file_name, shard.entries, self.metadata, part=True).__enter__()
                self._open[index] = out
            return out

    def commit(self) -> Path:
        """Finish every shard, write the index and the copied files, and rename the folder into place."""
        assert self._temp is not None
        for index in range(len(self.plan.shards)):
            if not self._done[index]:  # shards of empty tensors only, or never complete by byte count
                out = self._shard(index)
                self._done[index] = True
                self._open.pop(index, None)
                _finish(out)
        try:
            if len(self.plan.shards) > 1:
                _write_json(self._temp / INDEX_NAME, self.plan.index())
            self._copy_companions(self._temp)
            os.chmod(self._temp, 0o777 & ~_umask())
            fsync_folder(self._temp)
            _replace_folder(self._temp, self.path)
            self._temp = None
            mark_committed(self.path)
        except OSError as error:
            raise MechaError(f"cannot finish writing {str(self.path)!r}: {error.strerror or error}") from None
        fsync_folder(self.path.parent)
        return self.path

    def _copy_companions(self, folder: Path) -> None:
        source = self.companions_from
        if source is None:
            return
        config_path = source / CONFIG_NAME
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, ValueError) as error:
                raise MechaError(f"{config_path}: cannot copy the model's config: not JSON ({error})") from None
            if isinstance(config, dict):
                _write_json(folder / CONFIG_NAME, _updated_config(config, self.config_updates))
        for item in sorted(source.iterdir()):
            if item.name in COMPANION_NAMES or item.name.startswith(COMPANION_PREFIXES):
                if item.is_file():
                    shutil.copyfile(item, folder / item.name)

    def abort(self) -> None:
        """Remove the temporary folder; whatever was at the target is left as it was."""
        opened, self._open = list(self._open.values()), {}
        temp, self._temp = self._temp, None
        try:
            for out in opened:
                out.abort()
        finally:
            if temp is not None:
                shutil.rmtree(temp, ignore_errors=True)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._temp is not None:
            self.abort()


def _finish(out: OutputFile) -> None:
    try:
        out.commit()
    finally:
        out.__exit__(None, None, None)


def _updated_config(config: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """The config with `updates`; ``torch_dtype`` also sets ``dtype``, its name since transformers 5,
    where the config already uses that name."""
    config = dict(config)
    for key, value in updates.items():
        if key == "torch_dtype" and "dtype" in config:
            config["dtype"] = value
            if "torch_dtype" not in config:
                continue
        config[key] = value
    return config


def _is_model_folder(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and model_file_in(folder) is not None


def _replace_folder(temp: Path, target: Path) -> None:
    """Rename `temp` to `target`; an existing `target` is moved aside first and removed after."""
    if not target.exists():
        os.rename(temp, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=TEMP_SUFFIX, dir=target.parent))
    os.rmdir(aside)
    os.rename(target, aside)
    try:
        os.rename(temp, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
