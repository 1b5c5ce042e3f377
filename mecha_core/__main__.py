"""``python -m mecha_core``: the same as the ``mecha`` command."""

import sys

from .cli import main

sys.exit(main())
