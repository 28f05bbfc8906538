"""``gateway operator-password -c gateway.toml [--stdin]``: set the status page's password.

The page needs it when opened from another machine than the gateway itself (loopback needs no
login).  Asked twice at a terminal (not echoed), or read as one line from standard input with
``--stdin`` (for an installer).  Only a salted scrypt hash is kept, in the state directory
(``operator-password``, mode 0600); the running daemon reads it at the next login, so no restart
is needed.  Setting it ends every login made with the old one (those pages ask again) and is
recorded in the audit trail.
"""

from __future__ import annotations

import argparse
import getpass
import os
import pwd
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

from gateway.cli.common import Commands, Console, Refused, UsageError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime


def register(commands: Commands) -> None:
    parser = commands.add(
        "operator-password",
        operator_password,
        help="set the password the status page asks for off loopback",
        description="Set the operator password of the status page. From the gateway itself "
        "(loopback) the page needs no login; from any other machine it asks for this "
        "password. Only a salted hash is stored, in the state directory.",
    )
    parser.add_argument("-c", "--config", required=True, type=Path, help="gateway.toml")
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="read the password as one line from standard input instead of asking twice",
    )


def _who() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def operator_password(args: argparse.Namespace, console: Console) -> int:
    from gateway.auditlog.writer import WallClock, open_daemon_trail
    from gateway.config import load_gateway_config
    from gateway.web.operator import MIN_LENGTH, write_password

    config = load_gateway_config(args.config)
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask on: give the password on stdin with --stdin")
        password = getpass.getpass("New operator password: ")
        again = getpass.getpass("Same password again: ")
        if password != again:
            raise Refused("the two passwords differ; nothing was changed")
    if len(password) < MIN_LENGTH:
        raise Refused(
            f"the password must have at least {MIN_LENGTH} characters; nothing was changed"
        )
    try:
        path = write_password(config.state_dir, password)
    except OSError as e:
        where = config.state_dir
        raise Refused(f"cannot write the password file in {where}: {e.strerror}") from None
    clock = cast("IReactorTime", WallClock())
    trail = open_daemon_trail(config.state_dir, config_file=config.path, clock=clock)
    try:
        trail.record("operator.password_set", who=_who())
    finally:
        trail.close()
    console.tell(
        f"operator password set ({path}, readable only by {_who()}); the status page asks for "
        "it from other machines than this one"
    )
    return 0
