"""``gateway relay -c relay.toml``: the vendor relay; ``gateway relay ACTION ...``: its admin.

An action is a word after ``relay`` with its arguments (``add-engineer NAME``); each one is an
entry in `ACTIONS`, so the engineer and gateway administration of the brief is added there.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import frozen

from gateway.cli.common import Commands, Console, UsageError
from gateway.cli.process import add_log_flags, global_reactor, serve
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
    add_log_flags(parser)
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
    from gateway.relay.sdstatus import relay_line
    from gateway.relay.service import makeService
    from gateway.sdnotify import notify_service

    reactor = global_reactor()
    daemon = makeService(config, reactor)
    # systemd (Type=notify): READY once the listeners are up, gateways connected, the watchdog.
    registry = daemon.metrics.registry
    line = relay_line(
        daemon.tunnels, lambda: registry.get_sample_value("relay_streams_active") or 0.0
    )
    notify_service(reactor, line).setServiceParent(daemon)
    return serve(console, args, daemon)


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


# -- enrollment, revocation (issue 19; gateway.enrollment) ---------------------------------------


def enroll_token(
    config: RelayConfig, words: list[str], args: argparse.Namespace, console: Console
) -> int:
    """A one-time enrollment token for GATEWAY_ID: printed once, only its hash is kept."""
    import json
    import time
    from datetime import UTC, datetime

    from gateway.cli.common import Refused
    from gateway.enrollment.revocations import Revocations
    from gateway.enrollment.tokens import DEFAULT_HOURS, MAX_HOURS, TokenStore
    from gateway.identity import InvalidGatewayId, validate_gateway_id

    (gateway_id,) = words
    try:
        validate_gateway_id(gateway_id)
    except InvalidGatewayId as e:
        raise UsageError(str(e)) from None
    if config.enrollment is None:
        raise Refused(f"{config.path}: no [enrollment] table: this relay does not enroll gateways")
    hours = DEFAULT_HOURS if getattr(args, "hours", None) is None else args.hours
    minutes = getattr(args, "minutes", None)
    seconds = hours * 3600 if minutes is None else minutes * 60
    if not 60 <= seconds <= MAX_HOURS * 3600:
        raise UsageError(f"--hours/--minutes: from 1 minute to {MAX_HOURS:g} hours")
    why = Revocations(config.state_dir).why_revoked(gateway_id, None)
    if why is not None:
        raise Refused(f"{why}; a revoked id stays revoked: enroll the machine under a new id")
    issued = TokenStore(config.state_dir, time.time).issue(gateway_id, seconds=seconds)
    expires = datetime.fromtimestamp(issued.expires, UTC).isoformat(timespec="seconds")
    _relay_audit(config, "enrollment.token_issued", gateway_id, expires=expires)
    if getattr(args, "json", False):
        console.print(
            json.dumps({"gateway": gateway_id, "token": issued.token, "expires": expires})
        )
        return 0
    console.tell(
        f"Enrollment token for gateway {gateway_id!r}, valid once until {expires} "
        "(shown once; any older unused token for this id no longer works). On the gateway:"
    )
    console.tell(
        f"  gateway enroll --relay {_public_address(config)} --ca relay-ca.pem --token TOKEN "
        "-c /etc/gateway/gateway.toml"
    )
    console.print(issued.token)
    return 0


def _public_address(config: RelayConfig) -> str:
    """HOST:PORT a gateway dials: the first DNS name of the relay's certificate (the listener
    itself usually listens on every address) and the gateway listener's port."""
    from cryptography import x509

    port = config.gateways.listen.port
    try:
        cert = x509.load_pem_x509_certificate(config.gateways.cert.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        dns = []
    return f"{dns[0]}:{port}" if dns else f"RELAY:{port}"


def _enroll_token_view(config: RelayConfig, words: list[str], console: Console) -> int:
    return enroll_token(config, words, argparse.Namespace(json=False), console)


def revoke(
    config: RelayConfig, words: list[str], args: argparse.Namespace, console: Console
) -> int:
    """Revoke a gateway id for good (or one certificate with --serial); a running relay cuts
    its tunnel within a second."""
    import time

    from gateway.enrollment.revocations import revoke as record
    from gateway.enrollment.tokens import TokenStore
    from gateway.identity import InvalidGatewayId, validate_gateway_id

    (gateway_id,) = words
    try:
        validate_gateway_id(gateway_id)
    except InvalidGatewayId as e:
        raise UsageError(str(e)) from None
    serial = getattr(args, "serial", None)
    if serial is not None:
        try:
            int(serial, 16)
        except ValueError:
            raise UsageError(f"--serial: {serial!r} is not a hexadecimal serial number") from None
    new = record(config.state_dir, gateway_id, now=time.time(), serial=serial)
    withdrawn = (
        0 if serial is not None else TokenStore(config.state_dir, time.time).withdraw(gateway_id)
    )
    what = (
        f"certificate {serial} of gateway {gateway_id!r}" if serial else f"gateway {gateway_id!r}"
    )
    if new:
        _relay_audit(
            config, "gateway.revoked", gateway_id, serial=serial, tokens_withdrawn=withdrawn
        )
    console.tell(
        f"{what} {'revoked' if new else 'was revoked already'}: a running relay closes its "
        "tunnel within a second and refuses its tunnels and renewals from now on"
        + (f"; {withdrawn} unused enrollment token(s) withdrawn" if withdrawn else "")
    )
    return 0


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


def _revoke_view(config: RelayConfig, words: list[str], console: Console) -> int:
    return revoke(config, words, argparse.Namespace(serial=None), console)


def revocations(
    config: RelayConfig, words: list[str], args: argparse.Namespace, console: Console
) -> int:
    """The revoked gateway ids and certificate serials, with when."""
    import json

    from gateway.enrollment.revocations import listed

    data = listed(config.state_dir)
    rows = [
        {"gateway": gateway_id, "serial": None, "revoked": _moment(entry.get("revoked", 0))}
        for gateway_id, entry in sorted(data["gateways"].items())
    ] + [
        {
            "gateway": entry.get("gateway"),
            "serial": serial,
            "revoked": _moment(entry.get("revoked", 0)),
        }
        for serial, entry in sorted(data["serials"].items())
    ]
    if getattr(args, "json", False):
        console.print(json.dumps({"revoked": rows}, indent=1))
        return 0
    if not rows:
        console.print("nothing is revoked")
        return 0
    for row in rows:
        what = f"certificate {row['serial']}" if row["serial"] else "every certificate"
        console.print(f"{row['gateway']}  {what}  revoked {row['revoked']}")
    return 0


def _revocations_view(config: RelayConfig, words: list[str], console: Console) -> int:
    return revocations(config, words, argparse.Namespace(json=False), console)


def _relay_audit(config: RelayConfig, event: str, who: str, **details: Any) -> None:
    """Record in the relay's audit trail (the CLI writes beside the running relay, locked)."""
    from gateway.auditlog.writer import open_daemon_trail
    from gateway.cli.process import global_reactor

    trail = open_daemon_trail(config.state_dir, config_file=config.path, clock=global_reactor())
    try:
        trail.record(event, who=who, by=_operator(), **details)
    finally:
        trail.close()


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _enrollment_flags(parser: argparse.ArgumentParser) -> None:
    have = set(parser._option_string_actions)
    if "--hours" not in have:
        parser.add_argument(
            "--hours",
            type=float,
            metavar="N",
            help="enroll-token: the token works for N hours (default 24)",
        )
        parser.add_argument(
            "--minutes", type=float, metavar="N", help="enroll-token: N minutes instead"
        )
        parser.add_argument(
            "--serial", metavar="HEX", help="revoke: only the certificate with this serial"
        )
    _json_flag(parser)


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
    "enroll-token": Action(
        "enroll-token GATEWAY_ID [--hours N] [--json]",
        1,
        _enroll_token_view,
        flags=_enrollment_flags,
        run_with_flags=enroll_token,
    ),
    "revoke": Action(
        "revoke GATEWAY_ID [--serial HEX]",
        1,
        _revoke_view,
        flags=_enrollment_flags,
        run_with_flags=revoke,
    ),
    "revocations": Action(
        "revocations [--json]",
        0,
        _revocations_view,
        flags=_enrollment_flags,
        run_with_flags=revocations,
    ),
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
