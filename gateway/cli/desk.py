"""``gateway relay sessions -c relay.toml``: the support desk's view of the running relay.

The relay's control socket (``STATE_DIR/control.sock``, `gateway.relay.control`) answers with
every gateway connected to it: where from and since when, its access mode, the requests waiting
for the plant and the live sessions, as each gateway reported them over its tunnel.  Printed as
one block per gateway, or with ``--json`` as the relay gave it.  No Twisted: like the gateway's
control commands this asks one thing through the standard library (`gateway.cli.unixhttp`).

Exit codes: 0 shown, 1 the relay answered something unusable, 2 a mistake (or no permission on
the socket), 3 the relay is not running.  Every text a gateway reported is shown with control
characters escaped: a reason is an engineer's words, and a terminal must not obey them.
"""

from __future__ import annotations

import json
import time
import unicodedata
from typing import Any

from gateway.cli.common import CommandError, Console, DaemonNotRunning, Refused, UsageError
from gateway.cli.control import (
    clock_time,
    listed,
    plural,
    relative,
    seconds_of,
    table,
    who_may_use,
)
from gateway.config import RelayConfig

__all__ = ["CONTROL_SOCKET", "GATEWAYS_URL", "render", "sessions"]

CONTROL_SOCKET = "control.sock"
"""As `gateway.relay.control.CONTROL_SOCKET` (found by name, without importing Twisted)."""
GATEWAYS_URL = "/api/gateways"
TIMEOUT = 15.0
"""The relay answers within its answer timeout (2 s) for every gateway at once."""

MODE_WORDS = {
    "attended": "engineers get in with a request the plant approves, or a code it gives",
    "unattended": "authorised engineers get in without asking; the plant sees each one",
    "disabled": "remote access is switched off at the plant",
}


def sessions(config: RelayConfig, as_json: bool, console: Console) -> int:
    answer = ask_relay(config)
    if as_json:
        console.print(json.dumps(answer, indent=2))
        return 0
    for line in render(answer, time.time()):
        console.print(line)
    return 0


def ask_relay(config: RelayConfig) -> dict[str, Any]:
    """The relay's ``GET /api/gateways``; a `CommandError` when it cannot be had."""
    from gateway.cli.unixhttp import NoAnswer, call

    socket = config.state_dir / CONTROL_SOCKET
    try:
        answer = call(socket, "GET", GATEWAYS_URL, timeout=TIMEOUT)
    except NoAnswer as e:
        raise _unreachable(config, e) from None
    body = answer.body
    if answer.status != 200 or not isinstance(body, dict) or "gateways" not in body:
        said = body.get("reason") if isinstance(body, dict) else None
        raise Refused(
            f"the relay answered {answer.status} on {socket}"
            + (f": {_shown(str(said))}" if said else " without a list of gateways")
        )
    return body


def _unreachable(config: RelayConfig, e: Any) -> CommandError:
    where = e.path
    if e.kind == "absent":
        return DaemonNotRunning(
            f"the relay is not running (no answer on {where}); start it with: "
            f"gateway relay -c {config.path}"
        )
    if e.kind == "permission":
        return UsageError(f"permission denied on {where}: {who_may_use(where)}")
    if e.kind == "timeout":
        return DaemonNotRunning(f"the relay did not answer on {where} ({e.detail})")
    return Refused(f"no usable answer from the relay on {where}: {e.detail}")


# -- the readable view --------------------------------------------------------------------------


def render(answer: dict[str, Any], now: float) -> list[str]:
    """One block per gateway: who, where from, since when, its mode, requests and sessions."""
    gateways = [g for g in answer.get("gateways") or [] if isinstance(g, dict)]
    if not gateways:
        return ["no gateways are connected to this relay"]
    lines = [f"{plural(len(gateways), 'gateway')} connected to this relay"]
    for gateway in gateways:
        lines.append("")
        lines += _gateway(gateway, now)
    return lines


def _gateway(gateway: dict[str, Any], now: float) -> list[str]:
    since = _when(gateway.get("connected_since"))
    head = f"{_shown(gateway.get('id'))}  connected"
    if since is not None:
        head += f" since {clock_time(since)} ({relative(since, now)})"
    head += f" from {_shown(gateway.get('address'))}"
    streams = gateway.get("streams")
    if isinstance(streams, int):
        head += f", {plural(streams, 'stream')} open"
    lines = [head]
    unknown = gateway.get("sessions_unknown")
    if unknown is not None:
        lines.append(f"  sessions unknown: {_shown(unknown)}")
        return lines
    mode = _shown(gateway.get("mode"))
    words = MODE_WORDS.get(mode)
    lines.append(f"  access: {mode}" + (f" ({words})" if words else ""))
    requests = gateway.get("requests") or []
    sessions = gateway.get("sessions") or []
    if not requests and not sessions:
        lines.append("  no requests waiting, no live sessions")
        return lines
    if requests:
        lines.append(f"  waiting for the plant: {plural(len(requests), 'request')}")
        rows = [
            [
                _shown(r.get("id")),
                _shown(r.get("engineer")),
                _waited(_when(r.get("asked")), now),
                relative(_when(r.get("expires")), now),
                listed([_shown(t) for t in r.get("targets") or []]),
                _shown(r.get("reason")),
            ]
            for r in requests
        ]
        headings = ["REQUEST", "ENGINEER", "WAITED", "ANSWER BY", "TARGETS", "REASON"]
        lines += _indented(table(headings, rows))
    if sessions:
        lines.append(f"  live: {plural(len(sessions), 'session')}")
        rows = [
            [
                _shown(s.get("id")),
                _shown(s.get("engineer")),
                listed([_shown(t) for t in s.get("targets") or []]),
                _shown(s.get("permission")),
                _ends(s, now),
                str(len(s.get("connections") or [])),
                _shown(s.get("reason")) or ("(unattended)" if s.get("implicit") else ""),
            ]
            for s in sessions
        ]
        headings = ["SESSION", "ENGINEER", "TARGETS", "PERMISSION", "EXPIRES", "CONNECTIONS"]
        lines += _indented(table([*headings, "REASON"], rows))
    return lines


def _indented(rows: list[str]) -> list[str]:
    return ["    " + row for row in rows]


def _ends(session: dict[str, Any], now: float) -> str:
    expires = _when(session.get("expires"))
    if expires is None:
        return "no end"
    return f"{clock_time(expires)} ({relative(expires, now)})"


def _waited(asked: float | None, now: float) -> str:
    if asked is None:
        return "?"
    words = relative(asked, now)
    return words.removesuffix(" ago") if words.endswith(" ago") else "0 s"


def _when(text: object) -> float | None:
    """An ISO time from the relay as POSIX seconds; None for anything else."""
    try:
        return seconds_of(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _shown(value: object) -> str:
    """A reported text fit for a terminal: every control or format character escaped."""
    if value is None:
        return ""
    text = str(value)
    return "".join(
        ch if not unicodedata.category(ch).startswith("C") else _escaped(ch) for ch in text
    )


def _escaped(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
