"""``gateway connect``: the engineer's local forward to one processor target (or, with
``--group``, to every member of a target group, each on its own port number at ``--bind``).

The arguments and the process live here; the client itself is `gateway.connect`.  Everything the
client has to tell the engineer comes out as ``gateway connect: ...`` lines on stderr.

Exit codes: 0 when the session ended (by the plant, at its expiry, remote access switched off) or
on Ctrl-C/SIGTERM; 1 when the client cannot go on (denied, a refused code, a bad token, a gateway
the engineer may not reach or the relay does not know, the relay's certificate, attended mode
without ``--reason``/``--code``, the local port taken); 2 for a usage mistake, before anything is
dialled.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from pathlib import Path
from typing import Any

from gateway.cli.common import EXIT_REFUSED, Commands, Console, UsageError, address
from gateway.cli.process import global_reactor, raise_listen_errors, react
from gateway.config import Address

DEFAULT_BIND = "127.0.0.2"
"""``--bind``'s default (`gateway.connect.options.DEFAULT_BIND`; not imported: the client's
package pulls in Twisted, which only a running command needs)."""


def register(commands: Commands) -> None:
    parser = commands.add(
        "connect",
        connect,
        help="engineer's local forward to one processor target (or a target group)",
        epilog="example: gateway connect --relay relay.example.com:9443 --ca ca.pem "
        "--token $TOKEN --gateway plant7 --target web --listen 127.0.0.1:8080",
    )
    parser.add_argument("--relay", required=True, type=address, help="relay engineer HOST:PORT")
    parser.add_argument("--ca", required=True, type=Path, help="CA that signed the relay's cert")
    parser.add_argument(
        "--token",
        default=os.environ.get("GATEWAY_TOKEN"),
        help="engineer token (or set GATEWAY_TOKEN, which keeps it out of the process list)",
    )
    parser.add_argument("--gateway", required=True, help="gateway id")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--target", help="target name on that gateway")
    what.add_argument(
        "--group",
        help="a target group on that gateway (a processor whose UI spans several ports): each "
        "member on its own port number at --bind",
    )
    parser.add_argument(
        "--listen", type=address, help="local HOST:PORT for --target (default 127.0.0.1:8080)"
    )
    parser.add_argument(
        "--bind",
        type=bind_address,
        help=f"local address for --group's ports (default {DEFAULT_BIND}); no port: each member "
        "listens on its own",
    )
    parser.add_argument("--server-name", help="relay certificate name, if not the HOST")
    attended = parser.add_mutually_exclusive_group()
    attended.add_argument(
        "--reason",
        help="ask the plant for a session, saying why (e.g. 'ticket 4711: recalibrate camera'); "
        "forwarding starts once staff approve it",
    )
    attended.add_argument(
        "--code", help="the 6-digit session code the plant read out to you: in at once, once"
    )


MAX_REASON = 500
"""Characters of a reason the gateway keeps; a longer one is refused here, not cut there."""
_CODE_SEPARATORS = re.compile(r"[ -]")


def session_code(text: str) -> str:
    """``--code``: six digits, as read out (``123 456`` and ``123-456`` too)."""
    digits = _CODE_SEPARATORS.sub("", text)
    if len(digits) != 6 or not digits.isascii() or not digits.isdigit():
        raise UsageError("connect: --code is the 6 digits the plant read out to you, like 123456")
    return digits


def session_reason(text: str) -> str:
    """``--reason``: words the plant can judge, on one line."""
    reason = " ".join(text.split())
    if not reason:
        raise UsageError(
            "connect: --reason needs words the plant can judge (a ticket, what you will do)"
        )
    if len(reason) > MAX_REASON:
        raise UsageError(f"connect: --reason is at most {MAX_REASON} characters")
    return reason


def bind_address(text: str) -> str:
    """``--bind``: an IP address of this machine, without a port."""
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IP address (like 127.0.0.2; no port: each member listens on "
            "its own)"
        ) from None


def connect(args: argparse.Namespace, console: Console) -> int:
    from twisted.internet.error import CannotListenError

    from gateway.config import existing_file
    from gateway.connect import ConnectOptions, EngineerClient

    if not args.token:
        raise UsageError("connect: an engineer token is needed: --token or GATEWAY_TOKEN")
    if args.group is not None and args.listen is not None:
        raise UsageError(
            "connect: --listen is for --target; --group listens at --bind, on each member's port"
        )
    if args.group is None and args.bind is not None:
        raise UsageError("connect: --bind is for --group; --target listens at --listen")
    code = None if args.code is None else session_code(args.code)
    reason = None if args.reason is None else session_reason(args.reason)
    try:
        ca = existing_file(str(args.ca))  # a FIFO, /dev/null or ~nosuchuser: one line
    except ValueError as e:
        raise UsageError(f"connect: --ca {e}") from None
    options = ConnectOptions(
        relay=args.relay,
        ca=ca,
        token=args.token,
        gateway=args.gateway,
        target=args.target or "",
        listen=args.listen or Address("127.0.0.1", 8080),
        server_name=args.server_name,
        reason=reason,
        code=code,
        group=args.group,
        bind=args.bind or DEFAULT_BIND,
    )

    def report(line: str) -> None:
        console.tell(f"gateway connect: {line}")

    client = EngineerClient(options, global_reactor(), report)

    async def main(reactor: Any) -> int:
        raise_listen_errors(client)
        try:
            client.startService()
        except CannotListenError as e:
            report(f"cannot listen on {options.listen}: {e.socketError}")
            return EXIT_REFUSED
        reactor.addSystemEventTrigger("before", "shutdown", client.stopService)
        then = "" if not options.attended else " once the plant lets you in"
        if options.group is None:
            report(
                f"forwarding {client.url} -> target {options.target!r} on gateway "
                f"{options.gateway!r} via relay {options.relay}{then}"
            )
        else:
            report(
                f"asking relay {options.relay} for the members of group {options.group!r} on "
                f"gateway {options.gateway!r}; each listens at {options.bind} on its own "
                f"port{then}"
            )
        exit_code: int = await client.finished
        await client.stopService()
        return exit_code

    return react(console, args, main, daemon=True)
