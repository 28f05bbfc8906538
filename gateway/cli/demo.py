"""``gateway demo``: the whole stack on loopback; ``gateway demo-processor``: the processor."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.cli.common import Commands, Console, Refused, UsageError
from gateway.cli.process import react


def register(commands: Commands) -> None:
    demo = commands.add(
        "demo",
        run_demo,
        help="the whole stack on loopback, ready to try",
        description="Start a throw-away vendor CA, relay, gateway, demo processor and engineer "
        "client on loopback, print what to open, and stop them all on Ctrl-C.",
    )
    demo.add_argument("--workdir", type=Path, help="where to put configs, certificates, logs")
    demo.add_argument(
        "--mode",
        choices=["attended", "unattended"],
        default="unattended",
        help="the gateway's access mode (default unattended: the forward works at once; "
        "attended: the demo's engineer client asks the plant, and the demo prints how to "
        "approve it, ask again or use a session code)",
    )

    processor = commands.add(
        "demo-processor", run_processor, help="the demo processor web UI alone"
    )
    processor.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT")
    processor.add_argument("--name", default="Demo vision processor", help="name shown on the page")
    processor.add_argument(
        "--ws-port",
        type=int,
        metavar="PORT",
        help="the page opens its WebSocket on this port of its own host name (a processor "
        "whose UI spans several ports)",
    )


def run_demo(args: argparse.Namespace, console: Console) -> int:
    """The orchestrator runs child processes, not a reactor; it says what it does itself."""
    from gateway.demo.orchestrator import run_demo

    return run_demo(args.workdir, args.mode)


def run_processor(args: argparse.Namespace, console: Console) -> int:
    from twisted.internet.error import CannotListenError

    from gateway.config import parse_address
    from gateway.demo.processor import run_processor

    try:
        parse_address(args.listen)
    except ValueError as e:
        raise UsageError(f"demo-processor: --listen: {e}") from None
    if args.ws_port is not None and not 1 <= args.ws_port <= 65535:
        raise UsageError(f"demo-processor: --ws-port: {args.ws_port} is not a port (1 to 65535)")

    async def main(reactor: Any) -> int:
        try:
            await run_processor(reactor, args.listen, args.ws_port)
        except CannotListenError as e:
            return console.fail(Refused(f"cannot listen on {args.listen}: {e.socketError}"))
        return 0

    return react(console, args, main)
