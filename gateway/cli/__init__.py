"""The ``gateway`` command: argv, exit codes, and one module per command.

Only this package reads argv, prints, exits or imports the global reactor.  Each command module
has a ``register(commands)`` that adds its parser and handler; adding a command is adding a module
to `COMMAND_MODULES`.  A user's mistake (bad flag, bad config, unreadable certificate) is one line
on stderr and exit code 2, never a traceback; see `gateway.cli.common` for the exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from types import ModuleType
from typing import TextIO

from gateway import __version__
from gateway.cli import (
    audit,
    check,
    connect,
    control,
    demo,
    enroll,
    operator,
    pki,
    relay,
    run,
    snapshot,
)
from gateway.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Commands,
    Console,
    Handler,
    Refused,
    UsageError,
)

__all__ = ["COMMAND_MODULES", "main", "parser"]

COMMAND_MODULES: tuple[ModuleType, ...] = (
    run,
    relay,
    connect,
    pki,
    demo,
    control,
    audit,
    check,
    snapshot,
    enroll,
    operator,
)
"""In the order ``gateway --help`` lists them."""


def parser() -> argparse.ArgumentParser:
    return build()[0]


def build() -> tuple[argparse.ArgumentParser, Commands]:
    """The top-level parser and the registry of its commands."""
    top = argparse.ArgumentParser(
        prog="gateway",
        description="Remote service gateway: reach a processor's web UI on an isolated plant "
        "network through an outbound mutual-TLS tunnel.",
    )
    top.add_argument("--version", action="version", version=f"gateway {__version__}")
    top.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log as text or JSON lines"
    )
    top.add_argument(
        "--log-level", choices=["debug", "info", "warn", "error"], default="info", help="log level"
    )
    commands = Commands(top.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for module in COMMAND_MODULES:
        module.register(commands)
    return top, commands


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``gateway ARGV``; returns the exit code (the console script exits with it)."""
    console = Console(stdout or sys.stdout, stderr or sys.stderr)
    try:
        # argparse writes --help, --version and its usage errors to sys.stdout/sys.stderr.
        with redirect_stdout(console.out), redirect_stderr(console.err):
            args = parser().parse_args(argv)
    except SystemExit as e:  # it has said why; bad flags exit 2
        return _exit_code(e)
    handler: Handler = args.handler
    try:
        return handler(args, console)
    except CommandError as e:
        return console.fail(e)
    except Exception as e:
        mistake = _user_mistake(e)
        if mistake is None:
            raise
        return console.fail(mistake)


def _exit_code(exit: SystemExit) -> int:
    if exit.code is None:
        return EXIT_OK
    return exit.code if isinstance(exit.code, int) else EXIT_USAGE


def _user_mistake(error: Exception) -> CommandError | None:
    """The libraries' errors that are a user's mistake, each with its one line.

    Imported here, on the error path, so that a command pays only for what it uses.
    """
    from twisted.internet.error import CannotListenError

    from gateway.config import ConfigError
    from gateway.enrollment.files import StateFileError
    from gateway.relay.credentials import CredentialFileError
    from gateway.tls import TLSFileError

    if isinstance(error, ConfigError | TLSFileError | CredentialFileError):
        return UsageError(str(error))
    if isinstance(error, StateFileError):
        return Refused(str(error))
    if isinstance(error, CannotListenError):
        return Refused(f"cannot listen on {error.interface}:{error.port}: {error.socketError}")
    return None
