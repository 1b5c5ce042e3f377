"""Installed distributions written by hand: a module beside its ``.dist-info``, as pip leaves them.

Gives entry points that carry their distribution (name, version) without running pip, for the loader
tests and for the broken plugin installed beside the template.
"""

from __future__ import annotations

import importlib.metadata
import textwrap
from pathlib import Path


def write_distribution(folder: Path, dist_name: str, version: str, module: str, source: str,
                       plugin: str) -> importlib.metadata.EntryPoint:
    """Write `module` (its `source`) and a distribution declaring it as mecha plugin `plugin`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = folder / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[mecha]\n{plugin} = {module}\n", encoding="utf-8")
    (entry_point,) = importlib.metadata.Distribution.at(info).entry_points
    return entry_point
