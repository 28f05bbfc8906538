"""``gateway audit -c gateway.toml [--since WHEN] [--json] [--verify]``: the audit trail, read.

It reads the trail's files in the state directory itself, so it works whether the daemon runs or
not.  ``gateway relay audit -c relay.toml`` shows the relay's trail the same way (`show_trail`).
Default view: one line a record, in local time; ``--json``: the records as JSON lines;
``--verify``: "audit trail OK: N records in M files" (exit 0) or the first record that was edited,
removed or reordered (exit 1).  A trail that cannot be read: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from gateway.cli.common import Commands, Console, Refused, UsageError

_SHOWN = ("time", "seq", "event", "sr", "who", "result", "prev", "anchor")  # chain bookkeeping


def register(commands: Commands) -> None:
    parser = commands.add(
        "audit",
        audit,
        help="show or verify the gateway's audit trail",
        description="Show the gateway's audit trail (who asked, approved, connected, ended, "
        "and what was refused), or check that no record was edited, removed or reordered. "
        "Reads the files in the state directory; the daemon need not run.",
    )
    parser.add_argument("-c", "--config", required=True, type=Path, help="gateway.toml")
    parser.add_argument(
        "--session",
        metavar="ID",
        help="only the records of this session (gateway sessions): its approval, connections, "
        "every request on http targets and its end",
    )
    add_options(parser)


def add_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """``--since``, ``--json`` and ``--verify`` (those not already on ``parser``, which another
    action of the same command may have added); ``prefix`` starts their help (``audit: ``)."""
    have = set(parser._option_string_actions)
    if "--since" not in have:
        parser.add_argument(
            "--since",
            metavar="WHEN",
            help=f"{prefix}only records since WHEN: 90s, 30m, 1h, 2d, or a date/time "
            "like 2024-05-01T08:00 (local time)",
        )
    if "--json" not in have:
        parser.add_argument("--json", action="store_true", help="print JSON lines for scripts")
    if "--verify" not in have:
        parser.add_argument(
            "--verify",
            action="store_true",
            help=f"{prefix}check the hash chain; exit 1 naming the first record that was "
            "edited, removed or reordered",
        )


def audit(args: argparse.Namespace, console: Console) -> int:
    from gateway.auditlog.files import audit_folder
    from gateway.config import load_gateway_config

    config = load_gateway_config(args.config)
    return show_trail(audit_folder(config.state_dir), args, console)


def show_trail(folder: Path, args: argparse.Namespace, console: Console) -> int:
    """The view ``args`` asks for (``since``, ``json``, ``verify``) of the trail in ``folder``."""
    from gateway.auditlog.files import trail_files
    from gateway.auditlog.reader import AuditReadError, parse_since, read_trail, verify_trail

    since: float | None = None
    session = getattr(args, "session", None)
    if session is not None and args.verify:
        raise UsageError("--verify checks the whole trail; leave out --session")
    if getattr(args, "since", None) is not None:
        if args.verify:
            raise UsageError("--verify checks the whole trail; leave out --since")
        try:
            since = parse_since(args.since, time.time())
        except ValueError as e:
            raise UsageError(f"--since: {e}") from None
    try:
        if not trail_files(folder):
            _say(console, args, f"no audit records yet in {folder}")
            return 0
        if args.verify:
            result = verify_trail(folder)
            if args.json:
                console.print(json.dumps({"ok": result.ok, **attrs.asdict(result)}))
                return 0 if result.ok else Refused.exit_code
            if not result.ok:
                raise Refused(str(result))
            console.print(str(result))
            return 0
        shown = 0
        for record in read_trail(folder, since):
            if session is not None and record.get("session") != session:
                continue
            console.print(_json_line(record) if args.json else readable(record))
            shown += 1
    except (AuditReadError, OSError) as e:
        why = str(e) if isinstance(e, AuditReadError) else _unreadable(folder, e)
        raise UsageError(why) from None
    if not shown:
        when = " yet" if since is None else f" since {args.since}"
        when += "" if session is None else f" of session {session}"
        _say(console, args, f"no audit records{when} in {folder}")
    return 0


def readable(record: dict[str, Any]) -> str:
    """``2024-05-01 14:03:07  #231  session.approved  alice  ok  request=r1 minutes=60``."""
    details = " ".join(
        f"{key}={_value(value)}" for key, value in record.items() if key not in _SHOWN
    )
    parts = [
        _local(str(record.get("time", ""))),
        f"#{record.get('seq')}",
        f"{record.get('event', '?'):<22}",
        f"{record.get('who') or '-':<12}",
        f"{record.get('result', '?'):<6}",
        details,
    ]
    return "  ".join(parts).rstrip()


def _local(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _value(value: object) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'=" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _say(console: Console, args: argparse.Namespace, text: str) -> None:
    """Prose on stdout for people, on stderr when a script reads JSON from stdout."""
    if args.json:
        console.tell(text)
    else:
        console.print(text)


def _unreadable(folder: Path, error: OSError) -> str:
    return f"cannot read the audit trail in {folder}: {error.strerror or error}"
