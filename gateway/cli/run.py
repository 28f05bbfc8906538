"""``gateway run -c gateway.toml``: the edge daemon, in the foreground (systemd runs it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli.common import Commands, Console
from gateway.cli.process import add_log_flags, global_reactor, serve


def register(commands: Commands) -> None:
    parser = commands.add("run", run, help="the edge daemon (foreground; systemd runs it)")
    parser.add_argument("-c", "--config", required=True, type=Path, help="gateway.toml")
    add_log_flags(parser)


def run(args: argparse.Namespace, console: Console) -> int:
    from gateway.config import load_gateway_config

    config = load_gateway_config(args.config)
    from gateway.edge.sdstatus import TunnelLine
    from gateway.edge.service import makeService
    from gateway.sdnotify import notify_service

    reactor = global_reactor()
    daemon = makeService(config, reactor)
    # systemd (Type=notify): READY once the listeners are up, the tunnel's state, the watchdog.
    line = TunnelLine(str(config.relay.address))
    daemon.events.add(line)
    notify_service(reactor, line).setServiceParent(daemon)
    return serve(console, args, daemon)
