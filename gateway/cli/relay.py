"""``gateway relay -c relay.toml``: the vendor relay; ``gateway relay ACTION ...``: its admin.

An action is a word after ``relay`` with its arguments (``add-engineer NAME``); each one is an
entry in `ACTIONS`, so the engineer and gateway administration of the brief is added there.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from attrs import frozen

from gateway.cli.common import Commands, Console, UsageError
from gateway.cli.process import global_reactor, serve
from gateway.config import RelayConfig


@frozen
class Action:
    usage: str
    """``add-engineer NAME``: the words after ``gateway relay``."""
    arguments: int
    """How many words follow the action's name."""
    run: Callable[[RelayConfig, list[str], Console], int]
    flags: Callable[[argparse.ArgumentParser], None] | None = None
    """Adds flags of the action's own to ``gateway relay``; `run_with_flags` then gets them."""
    run_with_flags: Callable[[RelayConfig, list[str], argparse.Namespace, Console], int] | None = (
        None
    )


def register(commands: Commands) -> None:
    parser = commands.add(
        "relay",
        relay,
        help="the vendor relay (foreground), or 'relay add-engineer NAME'",
        description="Run the relay, or with 'add-engineer NAME' create an engineer token "
        "(printed once; only its hash is stored).",
    )
    parser.add_argument("action", nargs="*", metavar="add-engineer NAME", help="manage engineers")
    parser.add_argument("-c", "--config", required=True, type=Path, help="relay.toml")
    for action in ACTIONS.values():
        if action.flags is not None:
            action.flags(parser)


def relay(args: argparse.Namespace, console: Console) -> int:
    from gateway.config import load_relay_config

    config = load_relay_config(args.config)
    if args.action:
        name, *words = args.action
        action = ACTIONS.get(name)
        if action is None or len(words) != action.arguments:
            usages = [action] if action is not None else list(ACTIONS.values())
            raise UsageError(
                "usage: " + " | ".join(f"gateway relay {a.usage} -c relay.toml" for a in usages)
            )
        if action.run_with_flags is not None:
            return action.run_with_flags(config, words, args, console)
        return action.run(config, words, console)
    from gateway.relay.service import makeService

    return serve(console, args, makeService(config, global_reactor()))


def add_engineer(config: RelayConfig, words: list[str], console: Console) -> int:
    """Create an engineer's token: shown once on stdout, only its hash is kept."""
    from gateway.relay.credentials import add_engineer

    (name,) = words
    token = add_engineer(config.engineers.tokens, name)
    console.tell(
        f"Engineer {name!r} added to {config.engineers.tokens}. "
        "Their token (shown once, store it now):"
    )
    console.print(token)
    return 0


def audit(config: RelayConfig, words: list[str], args: argparse.Namespace, console: Console) -> int:
    """The relay's audit trail, shown or verified like the gateway's (`gateway.cli.audit`)."""
    from gateway.auditlog.files import audit_folder
    from gateway.cli.audit import show_trail

    return show_trail(audit_folder(config.state_dir), args, console)


def _audit_flags(parser: argparse.ArgumentParser) -> None:
    from gateway.cli.audit import add_options

    add_options(parser, prefix="audit: ")


def _audit_view(config: RelayConfig, words: list[str], console: Console) -> int:
    return audit(config, words, argparse.Namespace(since=None, json=False, verify=False), console)


ACTIONS: dict[str, Action] = {
    "add-engineer": Action("add-engineer NAME", 1, add_engineer),
    "audit": Action(
        "audit [--since WHEN] [--json] [--verify]",
        0,
        _audit_view,
        flags=_audit_flags,
        run_with_flags=audit,
    ),
}
