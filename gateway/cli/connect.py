"""``gateway connect``: the engineer's local forward to one processor target.

The arguments and the process live here; the client itself is `gateway.connect`.  Everything the
client has to tell the engineer comes out as ``gateway connect: ...`` lines on stderr.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from gateway.cli.common import EXIT_REFUSED, Commands, Console, UsageError, address
from gateway.cli.process import global_reactor, raise_listen_errors, react


def register(commands: Commands) -> None:
    parser = commands.add(
        "connect",
        connect,
        help="engineer's local forward to one processor target",
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
    parser.add_argument("--target", required=True, help="target name on that gateway")
    parser.add_argument("--listen", default="127.0.0.1:8080", type=address, help="local HOST:PORT")
    parser.add_argument("--server-name", help="relay certificate name, if not the HOST")


def connect(args: argparse.Namespace, console: Console) -> int:
    from twisted.internet.defer import Deferred
    from twisted.internet.error import CannotListenError

    from gateway.config import existing_file
    from gateway.connect import ConnectOptions, EngineerClient

    if not args.token:
        raise UsageError("connect: an engineer token is needed: --token or GATEWAY_TOKEN")
    try:
        ca = existing_file(str(args.ca))  # a FIFO, /dev/null or ~nosuchuser: one line
    except ValueError as e:
        raise UsageError(f"connect: --ca {e}") from None
    options = ConnectOptions(
        relay=args.relay,
        ca=ca,
        token=args.token,
        gateway=args.gateway,
        target=args.target,
        listen=args.listen,
        server_name=args.server_name,
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
        report(
            f"forwarding {client.url} -> target {options.target!r} on gateway "
            f"{options.gateway!r} via relay {options.relay}"
        )
        await client.report_gateway()
        await Deferred()
        return 0

    return react(console, args, main, daemon=True)
