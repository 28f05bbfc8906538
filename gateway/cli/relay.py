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
        epilog="actions:\n"
        + "\n".join(f"  gateway relay {a.usage} -c relay.toml" for a in ACTIONS.values())
        + "\n\n'sessions' asks the running relay (exit 3 if it is not running).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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


def add_engineer(
    config: RelayConfig, words: list[str], args: argparse.Namespace, console: Console
) -> int:
    """Create an engineer's token: shown once on stdout, only its hash is kept.

    Without ``--gateways`` the engineer may reach no gateway (deny by default), with a warning.
    """
    from datetime import UTC, datetime

    from gateway.relay.credentials import add_engineer, expiry_after

    (name,) = words
    tokens = config.engineers.tokens
    patterns = _gateway_patterns(args)
    days = getattr(args, "expires", None)
    expires = None
    if days is not None:
        if not 1 <= days <= 3650:
            raise UsageError(f"--expires: must be 1 to 3650 days, not {days}")
        expires = expiry_after(days, datetime.now(UTC))
    token = add_engineer(tokens, name, gateways=patterns, expires=expires)
    reach = f"for gateways {', '.join(patterns)}" if patterns else "for no gateway"
    until = f", until {expires} 00:00 UTC" if expires is not None else ""
    console.tell(f"Engineer {name!r} added to {tokens} {reach}{until}.")
    if not patterns:
        console.tell(
            "warning: without --gateways this engineer may reach no gateway; set gateways = "
            f'["PATTERN", ...] in their [[engineer]] section of {tokens}'
        )
    console.tell("Their token (shown once, store it now):")
    console.print(token)
    return 0


def _add_engineer_view(config: RelayConfig, words: list[str], console: Console) -> int:
    return add_engineer(config, words, argparse.Namespace(gateways=None, expires=None), console)


def _gateway_patterns(args: argparse.Namespace) -> tuple[str, ...]:
    from gateway.relay.credentials import parse_gateway_patterns

    patterns: list[str] = []
    for text in getattr(args, "gateways", None) or []:
        try:
            patterns.extend(parse_gateway_patterns(text))
        except ValueError as e:
            raise UsageError(f"--gateways: {e}") from None
    return tuple(dict.fromkeys(patterns))


def _engineer_flags(parser: argparse.ArgumentParser) -> None:
    have = set(parser._option_string_actions)
    if "--gateways" not in have:
        parser.add_argument(
            "--gateways",
            action="append",
            metavar="PATTERN,...",
            help="add-engineer: the gateways the engineer may reach, as glob patterns over "
            "gateway ids (plant7-*,demo-gateway); without it: none",
        )
    if "--expires" not in have:
        parser.add_argument(
            "--expires",
            type=int,
            metavar="DAYS",
            help="add-engineer: the token works at least DAYS days, then stops at 00:00 UTC",
        )
    if "--json" not in have:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def remove_engineer(
    config: RelayConfig, words: list[str], args: argparse.Namespace, console: Console
) -> int:
    """Delete an engineer's section; a running relay ends their streams within a second."""
    from gateway.cli.common import Refused
    from gateway.relay.credentials import EngineerNotFound, remove_engineer

    (name,) = words
    tokens = config.engineers.tokens
    try:
        removed = remove_engineer(tokens, name)
    except EngineerNotFound as e:
        raise Refused(str(e)) from None
    console.tell(
        f"Engineer {removed!r} removed from {tokens}; a running relay refuses their token and "
        "ends their streams within a second."
    )
    return 0


def _remove_engineer_view(config: RelayConfig, words: list[str], console: Console) -> int:
    return remove_engineer(config, words, argparse.Namespace(), console)


def engineers(
    config: RelayConfig, words: list[str], args: argparse.Namespace, console: Console
) -> int:
    """Names, gateway patterns, created, expires and last used; never a token or its hash."""
    import json
    import time

    from gateway._files import private_file_problem
    from gateway.relay.credentials import describe_entry, read_entries
    from gateway.relay.lastused import last_used_path, read_last_used

    tokens = config.engineers.tokens
    entries = read_entries(tokens)
    used = {n.casefold(): t for n, t in read_last_used(last_used_path(config.state_dir)).items()}
    now = time.time()
    rows = []
    for entry in entries:
        row = describe_entry(entry, now)
        when = used.get(entry.key)
        row["last_used"] = _moment(when) if when is not None else None
        rows.append(row)
    if getattr(args, "json", False):
        console.print(json.dumps({"file": str(tokens), "engineers": rows}, indent=1))
        return 0
    problem = private_file_problem(tokens, "engineers.toml")
    if problem is not None:
        console.tell(f"warning: {problem} (the relay refuses to start so)")
    if not rows:
        console.print(
            f"no engineers in {tokens}; add one with: gateway relay add-engineer NAME "
            "-c relay.toml --gateways PATTERN,..."
        )
        return 0
    table = [("NAME", "GATEWAYS", "CREATED", "EXPIRES", "PORTAL", "LAST USED")]
    for row in rows:
        expires = row["expires"] or "never"
        if row["expired"]:
            expires += " (expired)"
        table.append(
            (
                row["name"],
                ", ".join(row["gateways"]) or "(none: no gateway)",
                (row["created"] or "-")[:10],
                expires,
                row["portal"] or "-",
                (row["last_used"] or "never").replace("T", " ").replace("+00:00", " UTC"),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        cells = [c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)]
        console.print("  ".join([*cells, line[-1]]))
    return 0


def _moment(when: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def _engineers_view(config: RelayConfig, words: list[str], console: Console) -> int:
    return engineers(config, words, argparse.Namespace(json=False), console)


def audit(config: RelayConfig, words: list[str], args: argparse.Namespace, console: Console) -> int:
    """The relay's audit trail, shown or verified like the gateway's (`gateway.cli.audit`)."""
    from gateway.auditlog.files import audit_folder
    from gateway.cli.audit import show_trail

    return show_trail(audit_folder(config.state_dir), args, console)


def sessions(
    config: RelayConfig, words: list[str], args: argparse.Namespace, console: Console
) -> int:
    """The support desk's view: connected gateways, their modes, requests and live sessions,
    from the running relay (`gateway.cli.desk`)."""
    from gateway.cli.desk import sessions as show

    return show(config, bool(getattr(args, "json", False)), console)


def _sessions_view(config: RelayConfig, words: list[str], console: Console) -> int:
    return sessions(config, words, argparse.Namespace(json=False), console)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    if "--json" not in parser._option_string_actions:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _audit_flags(parser: argparse.ArgumentParser) -> None:
    from gateway.cli.audit import add_options

    add_options(parser, prefix="audit: ")


def _audit_view(config: RelayConfig, words: list[str], console: Console) -> int:
    """The trail shown in full (``verify`` here is the audit command's ``--verify`` flag, off
    for a plain view; it has nothing to do with TLS verification)."""
    return audit(config, words, argparse.Namespace(since=None, json=False, verify=False), console)


def set_password(config: RelayConfig, words: list[str], console: Console) -> int:
    """The engineer's portal password: asked twice on a terminal, else one line of stdin; only
    its slow salted hash is stored (`gateway.relay.portal.passwords`)."""
    import getpass
    import sys

    from gateway.cli.common import Refused
    from gateway.relay.credentials import CredentialFileError, EngineerNotFound
    from gateway.relay.portal.passwords import password_problem
    from gateway.relay.portal.passwords import set_password as store

    (name,) = words
    if sys.stdin.isatty():
        password = getpass.getpass(f"portal password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise Refused("the two passwords differ; nothing changed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    problem = password_problem(password)
    if problem is not None:
        raise Refused(problem)
    tokens = config.engineers.tokens
    try:
        stored = store(tokens, name, password)
    except EngineerNotFound as e:
        raise Refused(str(e)) from None
    except CredentialFileError as e:
        raise Refused(str(e)) from None
    console.tell(f"Portal password for {stored!r} set in {tokens} (only its scrypt hash).")
    return 0


def set_totp(config: RelayConfig, words: list[str], console: Console) -> int:
    """Enrol a portal second factor: the QR code is shown once, for the engineer's app."""
    from gateway.cli.common import Refused
    from gateway.relay.credentials import CredentialFileError
    from gateway.relay.portal.totp import enrol, provisioning_uri, qr_text

    (name,) = words
    try:
        stored, secret = enrol(config.engineers.tokens, name)
    except CredentialFileError as e:
        raise Refused(str(e)) from None
    uri = provisioning_uri(secret, stored)
    console.print(qr_text(uri))
    console.print(uri)
    console.tell(
        f"Second factor for {stored!r} set: scan the code above with an authenticator app now "
        "(it is not shown again); the portal asks for its 6 digits at every login."
    )
    return 0


def remove_totp(config: RelayConfig, words: list[str], console: Console) -> int:
    from gateway.cli.common import Refused
    from gateway.relay.credentials import CredentialFileError
    from gateway.relay.portal.totp import remove

    (name,) = words
    try:
        stored = remove(config.engineers.tokens, name)
    except CredentialFileError as e:
        raise Refused(str(e)) from None
    console.tell(f"Second factor for {stored!r} removed; the portal asks only for the password.")
    return 0


ACTIONS: dict[str, Action] = {
    "add-engineer": Action(
        "add-engineer NAME --gateways PATTERN,... [--expires DAYS]",
        1,
        _add_engineer_view,
        flags=_engineer_flags,
        run_with_flags=add_engineer,
    ),
    "remove-engineer": Action(
        "remove-engineer NAME", 1, _remove_engineer_view, run_with_flags=remove_engineer
    ),
    "set-password": Action("set-password NAME", 1, set_password),
    "set-totp": Action("set-totp NAME", 1, set_totp),
    "remove-totp": Action("remove-totp NAME", 1, remove_totp),
    "engineers": Action(
        "engineers [--json]", 0, _engineers_view, flags=_engineer_flags, run_with_flags=engineers
    ),
    "sessions": Action(
        "sessions [--json]", 0, _sessions_view, flags=_json_flag, run_with_flags=sessions
    ),
    "audit": Action(
        "audit [--since WHEN] [--json] [--verify]",
        0,
        _audit_view,
        flags=_audit_flags,
        run_with_flags=audit,
    ),
}
