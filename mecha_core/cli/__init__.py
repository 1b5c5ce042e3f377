"""The ``mecha`` command line: built-in commands plus those plugins add.

A user error prints one line, ``mecha: error: ...``, and exits 1 (``--debug`` adds the traceback);
a usage error exits 2; Ctrl-C exits 130 and SIGTERM 143, after removing any half-written output.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..errors import MechaError, PluginError
from ..plugins import Plugins, PluginWarning, get_plugins
from . import info_commands, merge_commands, misc_commands


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the same clean-up as Ctrl-C runs."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def build_parser(plugins: Plugins) -> argparse.ArgumentParser:
    """The argument parser for a plugin set (tests build it with their own)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser = argparse.ArgumentParser(prog="mecha", parents=[common],
                                     description="Merge neural-network checkpoints, key by key, with recipes.")
    parser.add_argument("--version", action="version", version=f"mecha {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    merge_commands.register(commands, common, plugins)
    info_commands.register(commands, common, plugins)
    misc_commands.register(commands, common, plugins)
    _add_plugin_commands(commands, common, plugins)
    return parser


def _add_plugin_commands(commands: Any, common: argparse.ArgumentParser, plugins: Plugins) -> None:
    """Add each plugin command, refusing those that would replace a built-in one.

    A broken plugin command (a name clash, options that cannot be declared) is reported and left
    out, so that every other command, ``mecha plugins`` above all, keeps working.
    """
    builtin = set(commands.choices)
    try:
        registry = plugins.cli_commands
    except PluginError as error:
        plugins.report(f"plugin commands are unavailable: {error}")
        return
    for name in registry:
        command = registry.get(name)
        provider = plugins.provider("cli_commands", name).label
        if name in builtin:
            plugins.report(f"plugin {provider} provides a command {name!r}, which is a built-in command and cannot "
                           f"be replaced")
            continue
        sub = commands.add_parser(name, parents=[common], help=command.summary, description=command.summary)
        try:
            if command.add_arguments is not None:
                command.add_arguments(sub)
        except Exception as error:
            reason = f"command {name!r} from plugin {provider} cannot declare its options: {type(error).__name__}: {error}"
            plugins.report(reason)
            sub.set_defaults(handler=_unavailable(reason))
            continue
        sub.set_defaults(handler=_plugin_handler(command.run, provider, name))


def _unavailable(reason: str) -> Any:
    def handler(args: argparse.Namespace) -> int:
        raise PluginError(reason)
    return handler


def _plugin_handler(run: Any, label: str, name: str) -> Any:
    def handler(args: argparse.Namespace) -> int | None:
        try:
            return run(args)
        except (MechaError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:
            raise MechaError(f"command {name!r} from plugin {label} failed: {type(error).__name__}: {error}") from error
    return handler


def _format_warning(message: Any, category: type, filename: str, lineno: int, line: str | None = None) -> str:
    return f"mecha: warning: {one_line(str(message))}\n"


def one_line(message: str) -> str:
    """A message on one line: scripts and logs read errors line by line."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    warnings.formatwarning = _format_warning  # one line per warning
    warnings.simplefilter("always", PluginWarning)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (tests calling main() from a thread)
        previous = None
    try:
        parser = build_parser(get_plugins())
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # usage error (2), or --help/--version (0)
            return exit_.code if isinstance(exit_.code, int) else 0
        return int(args.handler(args) or 0)
    except MechaError as error:
        print(f"mecha: error: {one_line(str(error))}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 1
    except Terminated:
        print("mecha: terminated; no output was written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("mecha: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:  # a bug: say so in one line
        print(f"mecha: internal error: {type(error).__name__}: {one_line(str(error))} (this is a bug; --debug "
              f"shows the traceback)", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 3
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
