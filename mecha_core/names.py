"""The names plugins give their objects (merge methods, architectures, model types, CLI commands).

At the bottom of the core's imports: every module declaring a named object checks its name here.
"""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


def validate_name(name: str, what: str) -> str:
    """Refuse names that would not survive the recipe format or the CLI."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"invalid {what} name {name!r}: use lowercase letters, digits and underscores, "
                         f"starting with a letter")
    return name
