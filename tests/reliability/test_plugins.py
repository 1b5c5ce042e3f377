"""A plugin that fails at import, at registration or inside a merge method is named in the message;
the other plugins and the command line keep working."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mecha_core as mc
from mecha_core.plugins import PluginWarning, load_plugins, using_plugins

from .conftest import error_line, recipe_file, run, save, snapshot

BROKEN = importlib.metadata.EntryPoint("broken", "tests.reliability.broken_at_import", "mecha")
METHODS = importlib.metadata.EntryPoint("methods", "mecha_methods", "mecha")
IMPORT_FAILURE = ("plugin 'broken' failed: cannot import tests.reliability.broken_at_import: ImportError: No module "
                  "named 'some_missing_dependency'")


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    save({"w": torch.ones(2)}, tmp_path / "a.safetensors")
    save({"w": torch.zeros(2)}, tmp_path / "b.safetensors")
    return tmp_path


def test_a_plugin_failing_at_import_is_named_and_the_others_work(folder, capsys):
    with pytest.warns(PluginWarning) as caught:
        plugins = load_plugins(entry_points=[BROKEN, METHODS], allow=["broken", "methods"], strict=False)
    assert [str(w.message) for w in caught] == [IMPORT_FAILURE]
    with using_plugins(plugins):
        status, out, _ = run(capsys, "methods")
        assert status == 0 and "weighted_sum" in out
        status, out, _ = run(capsys, "plugins")
        assert status == 0
        assert ("broken (not installed): failed: cannot import tests.reliability.broken_at_import: ImportError: No "
                "module named 'some_missing_dependency'") in out.splitlines()
        recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1\n')
        status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
        assert status == 0, err
        recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "from_broken" &0 &1\n')
        status, _, err = run(capsys, "merge", "r.mecha", "-o", "out2.safetensors")
        assert status == 1
        line = error_line(err)
        assert line.startswith(f"mecha: error: r.mecha line 3: unknown merge method 'from_broken'; ")
        assert line.endswith("(plugins that failed to load: broken) (in: merge \"from_broken\" &0 &1)")


def test_a_plugin_calling_sys_exit_at_import_is_a_failed_plugin(folder):
    exits = importlib.metadata.EntryPoint("exits", "tests.reliability.exits_at_import", "mecha")
    with pytest.warns(PluginWarning) as caught:
        plugins = load_plugins(entry_points=[exits, METHODS], allow=["exits", "methods"], strict=False)
    assert [str(w.message) for w in caught] == ["plugin 'exits' failed: cannot import tests.reliability.exits_at_import: "
                                                "SystemExit: no GPU found"]
    assert "weighted_sum" in plugins.merge_methods


def test_a_failing_plugin_is_an_error_in_strict_mode(folder, capsys, monkeypatch):
    monkeypatch.setenv("MECHA_STRICT_PLUGINS", "1")
    with pytest.raises(mc.PluginError) as caught:
        load_plugins(entry_points=[BROKEN, METHODS], allow=["broken", "methods"])
    assert str(caught.value) == IMPORT_FAILURE + " (MECHA_STRICT_PLUGINS is set)"


class HookRaises:
    @mc.hookimpl
    def mecha_merge_methods(self):
        raise RuntimeError("registry exploded")


def test_a_plugin_whose_hook_raises_is_named_and_the_others_work(mecha_plugins, folder, capsys):
    import mecha_methods
    mecha_plugins.strict = False
    mecha_plugins.register(mecha_methods, "methods")
    mecha_plugins.register(HookRaises(), "hookboom")
    with pytest.warns(PluginWarning) as caught:
        status, out, _ = run(capsys, "methods")
    assert status == 0 and "weighted_sum" in out
    assert "plugin 'hookboom' failed: mecha_merge_methods() raised RuntimeError: registry exploded" in \
        [str(w.message) for w in caught]
    recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1\n')
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 0, err


class MethodRaises:
    @mc.hookimpl
    def mecha_merge_methods(self):
        @mc.merge_method
        def fragile(a: mc.Same, b: mc.Same) -> mc.Same:
            raise ZeroDivisionError("division by zero")

        return [fragile]


def test_a_merge_method_that_raises_is_named_with_its_plugin(plugins, folder, capsys):
    plugins.register(MethodRaises(), "fragile-plugin")
    recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "fragile" &0 &1\n')
    (folder / "out.safetensors").write_bytes(b"previous")
    before = snapshot(folder)
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 1
    assert error_line(err) == ("mecha: error: merge method 'fragile' from plugin 'fragile-plugin' failed on key 'w': "
                               "ZeroDivisionError: division by zero")
    assert snapshot(folder) == before
    status, out, _ = run(capsys, "methods")  # the CLI is unaffected
    assert status == 0 and "fragile" in out


class CommandRaises:
    @mc.hookimpl
    def mecha_cli_commands(self):
        def crash(args):
            raise KeyError("missing")

        return [mc.CliCommand("crash", "a command that fails", crash)]


def test_a_plugin_command_that_raises_is_named(plugins, capsys):
    plugins.register(CommandRaises(), "crasher")
    status, _, err = run(capsys, "crash")
    assert status == 1
    assert error_line(err) == "mecha: error: command 'crash' from plugin 'crasher' failed: KeyError: 'missing'"


def test_an_installed_broken_plugin_is_one_warning_line(tmp_path):
    """End to end: a distribution whose entry point fails to import, found by the real entry-point scan."""
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mecha]\nbroken = broken_plugin\n")
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('this plugin\\nis broken')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), MECHA_LOAD_PLUGINS="methods,broken",
               MECHA_CONFIG=str(tmp_path / "none.toml"))
    done = subprocess.run([sys.executable, "-m", "mecha_core", "methods"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and "weighted_sum" in done.stdout
    assert done.stderr.splitlines() == ["mecha: warning: plugin 'broken' (broken-plugin 1.0) failed: cannot import "
                                        "broken_plugin: RuntimeError: this plugin is broken"]


def _keys_that_raise():
    raise RuntimeError("cannot list my keys")


class ArchitectureRaises:
    @mc.hookimpl
    def mecha_architectures(self):
        return [mc.Architecture("fragile", (mc.Component("body", ()),), _keys_that_raise)]


def test_an_architecture_whose_keys_raise_does_not_break_other_merges(plugins, folder, capsys):
    plugins.register(ArchitectureRaises(), "fragile-arch")
    plugins.strict = False  # as for a user; strict mode makes the problem an error
    recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1\n')
    with pytest.warns(PluginWarning) as caught:
        status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 0, err
    assert [str(w.message) for w in caught] == ["architecture 'fragile' from plugin 'fragile-arch' could not list "
                                                "its keys (RuntimeError: cannot list my keys); it is skipped"]
    plugins.strict = True
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out2.safetensors", "--quiet")
    assert status == 1 and "could not list its keys" in error_line(err) and "MECHA_STRICT_PLUGINS" in err
