"""A plugin module that calls sys.exit() when imported, as a script-like plugin might (see test_plugins)."""

import sys

sys.exit("no GPU found")
