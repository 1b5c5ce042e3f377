"""User configuration: ``config.toml`` in the platform's user config folder.

    models_dirs = ["~/sd/models/Stable-diffusion", "~/sd/models/Lora"]
    threads = 4
    device = "cpu"
    work_dtype = "fp32"
    save_dtype = "fp16"
    executor = "local"           # or "ray" (mecha-ray), for every merge

Precedence: command-line flags (or arguments of the Python API) > ``MECHA_MODELS_DIR`` (folders
separated by ``os.pathsep``) > the config file > built-in defaults. ``MECHA_CONFIG`` points at
another config file.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import dtypes
from .errors import MechaError, suggest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few lines


@dataclasses.dataclass(frozen=True)
class Config:
    """Defaults for merges; every field may be overridden per call."""

    models_dirs: tuple[str, ...] = ()
    threads: int | None = None
    device: str = "cpu"
    work_dtype: str = "float32"
    save_dtype: str = "float16"
    executor: str = "local"
    path: str | None = None


def config_path() -> Path:
    """Where the config file is read from."""
    explicit = os.environ.get("MECHA_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs
    return Path(platformdirs.user_config_dir("mecha")) / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """The config file's settings (defaults where it is absent), checked. Every setting is optional."""
    path = path or config_path()
    raw = _read(path)
    if raw is None:
        return Config()
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise MechaError(f"config {path}: not valid TOML: {error}") from None
    fields = {"models_dirs", "threads", "device", "work_dtype", "save_dtype", "executor"}
    for key in data:
        if key not in fields:
            raise MechaError(f"config {path}: unknown setting {key!r}; {suggest(key, fields, what='setting')}")
    return Config(
        models_dirs=tuple(_dirs(data.get("models_dirs", []), path)),
        threads=_threads(data.get("threads"), f"config {path}: threads"),
        device=_string(data.get("device", "cpu"), path, "device"),
        work_dtype=_dtype(data.get("work_dtype", "fp32"), path, "work_dtype", dtypes.WORK_DTYPES),
        save_dtype=_dtype(data.get("save_dtype", "fp16"), path, "save_dtype", dtypes.SAVE_DTYPES),
        executor=_string(data.get("executor", "local"), path, "executor"),
        path=str(path),
    )


def _read(path: Path) -> bytes | None:
    """The config file's bytes; None when there is none. Only a regular file is read: a FIFO would
    block mecha, a device would feed it endless bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as error:
        raise MechaError(f"config {path}: cannot read: {error.strerror}") from None
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise MechaError(f"config {path}: is a folder; MECHA_CONFIG must name a config file")
        if not stat.S_ISREG(status.st_mode):
            raise MechaError(f"config {path}: is not a regular file (a pipe or a device?); MECHA_CONFIG must name "
                             f"a config file")
        if status.st_size > MAX_CONFIG_BYTES:
            raise MechaError(f"config {path}: is {status.st_size} bytes, too large for a config file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise MechaError(f"config {path}: cannot read: {error.strerror}") from None
    finally:
        os.close(fd)


def _dtype(value: Any, path: Path, name: str, allowed: tuple[str, ...]) -> str:
    try:
        return dtypes.parse(_string(value, path, name), allowed, name.replace("_", " "))
    except MechaError as error:
        raise MechaError(f"config {path}: {error}") from None


def _dirs(value: Any, path: Path) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MechaError(f"config {path}: models_dirs must be a list of folder paths")
    return [str(Path(v).expanduser()) for v in value]


def _string(value: Any, path: Path, name: str) -> str:
    if not isinstance(value, str):
        raise MechaError(f"config {path}: {name} must be a string")
    return value


def _threads(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MechaError(f"{where} must be a whole number >= 1, got {value!r}")
    return value


def models_dirs(explicit: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None,
                config: Config) -> list[str]:
    """The models folders to search: explicit ones, else MECHA_MODELS_DIR, else the config file's."""
    if explicit:
        if isinstance(explicit, (str, os.PathLike)):
            explicit = [explicit]
        return [str(Path(d).expanduser()) for d in explicit]
    env = os.environ.get("MECHA_MODELS_DIR")
    if env:
        return [str(Path(d).expanduser()) for d in env.split(os.pathsep) if d]
    return list(config.models_dirs)


def default_threads() -> int:
    """One worker per available core, at most 8 (more only adds memory, not speed, on SD-sized keys)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def check_threads(value: Any) -> int:
    return _threads(value, "threads") or default_threads()
