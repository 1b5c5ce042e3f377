"""Stability AI's model spec (``modelspec.*`` metadata) for a merged file, from its architecture's names.

civitai, A1111 and ComfyUI read these keys to tell what a checkpoint is without guessing from its
tensors. The spec requires ``sai_model_spec``, ``architecture``, ``implementation`` and ``title``; an
architecture without model-spec names (the generic one, an LLM) gets none, rather than a partial spec.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping

from .architecture import Architecture

SPEC_VERSION = "1.0.0"
PREFIX = "modelspec."


def model_spec_metadata(architecture: Architecture, title: str, sources: Iterable[str],
                        date: datetime.date | None = None) -> dict[str, str]:
    """The ``modelspec.*`` keys of a file merged from `sources` (labels of the input models)."""
    names: Mapping[str, str] = architecture.model_spec
    if not names.get("architecture") or not names.get("implementation"):
        return {}
    metadata = {PREFIX + "sai_model_spec": SPEC_VERSION}
    metadata.update({PREFIX + key: str(value) for key, value in names.items()})
    metadata[PREFIX + "title"] = title
    metadata[PREFIX + "date"] = (date or datetime.datetime.now(datetime.timezone.utc).date()).isoformat()
    merged_from = ", ".join(dict.fromkeys(sources))
    if merged_from:
        metadata[PREFIX + "merged_from"] = merged_from
    return metadata
