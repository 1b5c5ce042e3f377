"""Every registered merge method as an attribute: ``mecha_core.methods.weighted_sum(a, b, alpha=0.3)``.

Looked up in the plugin registry on access, so plugins load only when a method is first used.
"""

from __future__ import annotations

from typing import Any

from .errors import PluginError
from .plugins import get_plugins


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return get_plugins().merge_methods.get(name)
    except PluginError as error:
        raise AttributeError(str(error)) from None


def __dir__() -> list[str]:
    return sorted(get_plugins().merge_methods)
