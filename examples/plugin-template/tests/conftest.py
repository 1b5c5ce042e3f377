"""mecha's testing kit: the mecha_plugins and mecha_cli fixtures (a fresh plugin set per test)."""

pytest_plugins = ["mecha_core.testing"]
