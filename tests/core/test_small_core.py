"""What the core holds and how: no side effect on import, the core's commands registered as a
plugin's, the merge options defined once, the test kit's dependency declared."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import mecha_core as mc
from mecha_core.merge import MergeSettings, make_options, merge_with_report

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_importing_mecha_core_leaves_the_warning_filters_alone():
    code = ("import warnings; before = list(warnings.filters); import mecha_core, mecha_core.testing; "
            "assert warnings.filters == before, warnings.filters[:len(warnings.filters) - len(before)]")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_demo_and_convert_come_from_the_core_plugin(mecha_plugins):
    assert mecha_plugins.provider("cli_commands", "demo").name == "core"
    assert mecha_plugins.provider("cli_commands", "convert").distribution == "mecha-core"
    assert mecha_plugins.records["core"].provides["cli_commands"] == ["demo", "convert"]


def test_the_merge_options_are_defined_once():
    fields = [field.name for field in dataclasses.fields(MergeSettings)]
    for function in (mc.merge, merge_with_report):
        shown = [p.name for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY]
        assert [name for name in shown if name != "on_plan"] == fields
    with pytest.raises(TypeError, match="unknown merge option 'threds'; did you mean 'threads'"):
        make_options(threds=2)
    with pytest.raises(TypeError, match="unknown merge option 'save_dtipe'"):
        mc.merge({"w": None}, save_dtipe="fp16")


def test_the_test_kit_declares_pytest_as_the_testing_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert any(requirement.startswith("pytest") for requirement in project["optional-dependencies"]["testing"])
