"""A plugin module that fails when imported, as a plugin with a missing dependency would (see test_plugins)."""

raise ImportError("No module named 'some_missing_dependency'")
