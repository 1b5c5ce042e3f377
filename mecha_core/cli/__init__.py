"""The ``mecha`` command line: built-in commands plus those plugins add.

A user error prints one line, ``mecha: error: ...``, and exits 1 (``--debug`` adds the traceback);
a usage error exits 2; Ctrl-C exits 130, SIGTERM 143, SIGHUP 129 and SIGUSR1/SIGUSR2 138/140, after
removing any half-written output. A signal arriving after the output was renamed into place says so
and exits 0: the output is complete. Standard error failing (a closed pipe) never stops a command.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..errors import MechaError, PluginError, Signalled, from_signal
from ..output_file import committed_outputs
from ..plugins import Plugins, PluginWarning, get_plugins
from . import explain_command, info_commands, merge_commands, streams

TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))


class Terminated(Signalled):
    """A termination signal, raised in the main thread so that the same clean-up as Ctrl-C runs."""


def _on_signal(signum: int, frame: Any) -> None:
    if signum == signal.SIGINT:
        raise Signalled(signum)
    raise Terminated(signum)


def build_parser(plugins: Plugins) -> argparse.ArgumentParser:
    """The argument parser for a plugin set (tests build it with their own)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser = argparse.ArgumentParser(prog="mecha", parents=[common],
                                     description="Merge neural-network checkpoints, key by key, with recipes.")
    parser.add_argument("--version", action="version", version=f"mecha {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    merge_commands.register(commands, common, plugins)
    explain_command.register(commands, common, plugins)
    info_commands.register(commands, common, plugins)
    _add_plugin_commands(commands, common, plugins)
    for sub in commands.choices.values():
        sub.set_defaults(command_parser=sub)  # a bad flag is reported with the subcommand's usage line
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
    """A plugin command, whose exit status is its return value (None or 0 to 255): an exception, a
    ``sys.exit()`` or another return value is reported naming the plugin."""
    def handler(args: argparse.Namespace) -> int | None:
        try:
            status = run(args)
        except MechaError:
            raise
        except Signalled:
            raise
        except BaseException as error:
            raise PluginError(f"command {name!r} from plugin {label} failed: {type(error).__name__}: {error}") from error
        if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 255):
            raise PluginError(f"command {name!r} from plugin {label} returned {status!r}; a command returns None "
                              f"or an exit status from 0 to 255")
        return status
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
    # torch warns when it loads without numpy, which mecha never uses: the command line (the process
    # is mecha's) hides that line; a program importing mecha_core keeps its own warning settings
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    previous_handlers = _install_signal_handlers()
    previous_stderr, previous_stdout = streams.guard_stderr(), sys.stdout
    written = len(committed_outputs())
    try:
        parser = build_parser(get_plugins())
        try:
            args, extra = parser.parse_known_args(argv)
            if extra:
                getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
        except SystemExit as exit_:  # usage error (2), or --help/--version (0)
            return exit_.code if isinstance(exit_.code, int) else 0
        if getattr(args, "output_is_file", False):
            streams.guard_stdout()
        return int(args.handler(args) or 0)
    except MechaError as error:
        print(f"mecha: error: {one_line(str(error))}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 1
    except KeyboardInterrupt as error:
        if not from_signal(error):  # raised by code, not by Ctrl-C
            print(f"mecha: internal error: KeyboardInterrupt raised without Ctrl-C (this is a bug; --debug shows "
                  f"the traceback)", file=sys.stderr)
            if debug:
                traceback.print_exc()
            return 3
        signum = error.signum if isinstance(error, Signalled) else signal.SIGINT
        what = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}.get(
            signum, f"terminated by {signal.Signals(signum).name}")
        done = committed_outputs()[written:]
        if done:  # the signal came after the rename: the output is there, and complete
            print(f"mecha: {what} after writing {done[-1]}, which is complete", file=sys.stderr)
            return 0
        print(f"mecha: {what}; no output was written", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # standard output was the output and its reader went away
        _discard_stdout()
        return 141
    except Exception as error:  # a bug: say so in one line
        print(f"mecha: internal error: {type(error).__name__}: {one_line(str(error))} (this is a bug; --debug "
              f"shows the traceback)", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 3
    except SystemExit as exit_:  # only a bug lets one through: it must not decide the exit status
        print(f"mecha: internal error: something called sys.exit({exit_.code!r}) (this is a bug; --debug shows "
              f"the traceback)", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 3
    finally:
        _restore_signal_handlers(previous_handlers)
        sys.stderr, sys.stdout = previous_stderr, previous_stdout


def _discard_stdout() -> None:
    """Point standard output at /dev/null, so that the interpreter's flush at exit cannot fail too."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.__stdout__.fileno() if sys.__stdout__ else 1)
        os.close(null)
    except (OSError, ValueError):
        pass


def _install_signal_handlers() -> dict[int, Any]:
    """Ctrl-C and the terminating signals raise in the main thread, so that clean-up runs; nothing
    is installed outside the main thread (tests calling main() from a thread)."""
    previous = {}
    for signum in (signal.SIGINT, *TERMINATING):
        try:
            previous[signum] = signal.signal(signum, _on_signal)
        except (ValueError, OSError):
            break
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
