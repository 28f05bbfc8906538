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
    from gateway.edge.service import makeService

    return serve(console, args, makeService(config, global_reactor()))
