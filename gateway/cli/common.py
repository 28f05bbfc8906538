"""The one way a command prints, fails and exits, and the registry command modules add to.

A command is a handler ``(args, console) -> exit code``.  It writes results for scripts on
``console.out`` and lines for people on ``console.err``; it fails by raising a `CommandError`
(`UsageError`, `Refused`, `DaemonNotRunning`), which `gateway.cli.main` turns into one line on
stderr and the error's exit code, never a traceback.  Nothing here imports Twisted: building the
parser and failing on a bad flag or config must stay cheap.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, ClassVar, TextIO

from gateway.config import Address, parse_address

EXIT_OK = 0
EXIT_REFUSED = 1
"""The action was refused (unknown request, expired code) or the program failed to start."""
EXIT_USAGE = 2
"""A user's mistake: a bad flag, config, certificate or argument."""
EXIT_NOT_RUNNING = 3
"""A control command found no running daemon."""

PROG = "gateway"


class CommandError(Exception):
    """Ends a command with one line ``PROG: message`` on stderr and ``exit_code``."""

    exit_code: ClassVar[int] = EXIT_REFUSED

    def __init__(self, message: str, *, prog: str = PROG) -> None:
        super().__init__(message)
        self.prog = prog

    @property
    def line(self) -> str:
        return f"{self.prog}: {self}"


class UsageError(CommandError):
    """The user asked for something that cannot work as given; exit code 2."""

    exit_code = EXIT_USAGE


class Refused(CommandError):
    """The action was understood and refused (its reason is the message); exit code 1."""

    exit_code = EXIT_REFUSED


class DaemonNotRunning(CommandError):
    """A control command found no daemon behind ``-c``; exit code 3."""

    exit_code = EXIT_NOT_RUNNING


class Console:
    """Where a command's output goes: ``out`` for results, ``err`` for people and errors.

    Injected so that tests run commands in-process with `io.StringIO` streams.
    """

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err

    def print(self, text: str = "") -> None:
        """A line of results on stdout (what a script would read)."""
        self.out.write(text + "\n")

    def tell(self, text: str) -> None:
        """A line for the person at the terminal on stderr, shown at once."""
        self.err.write(text + "\n")
        self.err.flush()

    def fail(self, error: CommandError) -> int:
        """Tell the user why the command ends; the exit code to end with."""
        self.tell(error.line)
        return error.exit_code


Handler = Callable[[argparse.Namespace, Console], int]
"""A command: parsed arguments and the console in, exit code out."""


class Commands:
    """The top-level sub-commands; each command module calls `add` in its ``register``."""

    def __init__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._subparsers = subparsers
        self.handlers: dict[str, Handler] = {}

    def add(self, name: str, handler: Handler, **parser_options: Any) -> argparse.ArgumentParser:
        """A parser for ``gateway NAME``; parsing it sets ``args.handler``."""
        if name in self.handlers:
            raise ValueError(f"command {name!r} registered twice")
        parser = self._subparsers.add_parser(name, **parser_options)
        parser.set_defaults(handler=handler)
        self.handlers[name] = handler
        return parser


def address(text: str) -> Address:
    """An argparse ``type`` for HOST:PORT; a bad one is a usage error naming the flag."""
    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
