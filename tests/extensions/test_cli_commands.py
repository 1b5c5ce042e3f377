"""Plugin CLI commands: they run with their options; a broken one never takes the rest of the CLI down."""

from __future__ import annotations

import argparse

import pytest

from mecha_core import CliCommand, MechaError
from mecha_core.plugins import PluginWarning
from mecha_core.testing import as_plugin


def greet(args: argparse.Namespace) -> int:
    print(" ".join(["hello"] * args.times))
    return 4


def times_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--times", type=int, default=1)


HELLO = CliCommand("hello", "say hello", greet, times_option)


def test_a_plugin_command_runs_with_its_options_and_exit_status(mecha_plugins, mecha_cli):
    mecha_plugins.register(as_plugin(HELLO), "greeter")
    result = mecha_cli("hello", "--times", "2")
    assert (result.status, result.out) == (4, "hello hello\n")
    assert "say hello" in mecha_cli("--help").out


def test_a_plugin_command_cannot_replace_a_built_in_one(mecha_plugins, mecha_cli):
    mecha_plugins.register(as_plugin(CliCommand("methods", "hijacked", lambda args: 99)), "hijacker")
    message = "plugin 'hijacker' provides a command 'methods', which is a built-in command and cannot be replaced"
    mecha_plugins.strict = False
    with pytest.warns(PluginWarning, match=f"^{message}$"):
        result = mecha_cli("methods")
    assert result.status == 0  # the built-in ran, not the plugin's
    mecha_plugins.strict = True
    result = mecha_cli("methods")
    assert result.status == 1
    assert result.err == f"mecha: error: {message} (MECHA_STRICT_PLUGINS is set)\n"


def test_errors_in_a_plugin_command_name_the_plugin(mecha_plugins, mecha_cli):
    def divide(args: argparse.Namespace) -> int:
        return 1 // 0

    def refuse(args: argparse.Namespace) -> int:
        raise MechaError("no such widget")

    mecha_plugins.register(as_plugin(CliCommand("divide", "x", divide), CliCommand("refuse", "y", refuse)), "buggy")
    result = mecha_cli("divide")
    assert (result.status, result.err) == (1, "mecha: error: command 'divide' from plugin 'buggy' failed: "
                                              "ZeroDivisionError: integer division or modulo by zero\n")
    result = mecha_cli("refuse")
    assert (result.status, result.err) == (1, "mecha: error: no such widget\n")  # a user error, as the plugin wrote it


def test_a_command_whose_options_cannot_be_declared_is_left_out(mecha_plugins, mecha_cli):
    def clash(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--debug")  # every command already has --debug

    mecha_plugins.register(as_plugin(CliCommand("clash", "x", greet, clash), HELLO), "clumsy")
    mecha_plugins.strict = False
    with pytest.warns(PluginWarning, match="^command 'clash' from plugin 'clumsy' cannot declare its options: "
                                           "ArgumentError: argument --debug: conflicting option string: --debug$"):
        assert mecha_cli("hello").status == 4  # its other command and the built-ins work
        result = mecha_cli("clash")
    assert result.status == 1
    assert result.err.startswith("mecha: error: command 'clash' from plugin 'clumsy' cannot declare its options")


def test_two_plugins_with_one_command_name_leave_the_cli_working(mecha_plugins, mecha_cli):
    mecha_plugins.register(as_plugin(HELLO), "first")
    mecha_plugins.register(as_plugin(CliCommand("hello", "again", greet)), "second")
    mecha_plugins.strict = False
    conflict = "CLI command 'hello' is provided by both 'first' and 'second'"
    with pytest.warns(PluginWarning, match=f"^plugin commands are unavailable: {conflict}"):
        result = mecha_cli("plugins", "--json")
    assert result.status == 0
    assert result.json()["error"].startswith(conflict)
