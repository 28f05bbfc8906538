"""The plant's control of the running daemon: ``gateway access|code|requests|approve|deny|
sessions|end -c gateway.toml``.

Each command reads the config only to find the state directory, asks the daemon one thing on
its control socket (``STATE_DIR/control.sock``, the JSON API of `gateway.web.api`) and prints the
answer for people, or with ``--json`` as the API gave it.  The daemon's consent service decides;
these commands check only what they can without it (a number of minutes, the shape of an id)
and word its refusals.  Exit codes: 0 done, 1 refused (the reason follows), 2 a mistake in the
command (or no permission on the socket), 3 no daemon answers.  No Twisted: a control command is
a short-lived process, so it talks HTTP through the standard library (`gateway.cli.unixhttp`).
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import stat
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gateway.cli.common import (
    CommandError,
    Commands,
    Console,
    DaemonNotRunning,
    Refused,
    UsageError,
)

if TYPE_CHECKING:
    from gateway.cli.unixhttp import NoAnswer

__all__ = ["CONTROL_SOCKET", "ControlClient", "register"]

CONTROL_SOCKET = "control.sock"
"""The daemon's control socket, in its state directory (as `gateway.web.api.CONTROL_SOCKET`)."""
MODES = ("attended", "unattended", "disabled")
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""As `gateway.web.api.ID`: ids are checked here before anything is sent."""
TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_MINUTES = 100_000
MAX_REASON = 300

MODE_WORDS = {
    "attended": "engineers get in only with a request approved here or a code you give them",
    "unattended": "authorised engineers reach the listed targets without asking; each one "
    "shows as a session you can end",
    "disabled": "remote access is switched off; every connection is refused",
}


# -- talking to the daemon ----------------------------------------------------------------------


class ControlClient:
    """The daemon behind ``-c``: one JSON call per method, failures as `CommandError` lines."""

    def __init__(self, config: Path, *, clock: Callable[[], float] = time.time) -> None:
        from gateway.config import load_gateway_config

        self.config = config
        self.socket = load_gateway_config(config).state_dir / CONTROL_SOCKET
        self.clock = clock

    def get(self, path: str) -> Any:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        from gateway.cli.unixhttp import NoAnswer, call  # only when a command talks

        try:
            answer = call(self.socket, method, "/api/" + path, body)
        except NoAnswer as e:
            raise self._unreachable(e) from None
        if 200 <= answer.status < 300:
            return answer.body
        reason = answer.body.get("reason") if isinstance(answer.body, dict) else None
        if not isinstance(reason, str) or not reason:
            reason = f"the gateway daemon answered {answer.status} without saying why"
        if answer.status == 400:
            raise UsageError(reason)
        raise Refused(reason)

    def _unreachable(self, e: NoAnswer) -> CommandError:
        where = self.socket
        if e.kind == "absent":
            return DaemonNotRunning(
                f"the gateway daemon is not running (no answer on {where}); start it with: "
                f"systemctl start gateway (or gateway run -c {self.config})"
            )
        if e.kind == "permission":
            return UsageError(f"permission denied on {where}: {who_may_use(where)}")
        if e.kind == "timeout":
            return DaemonNotRunning(
                f"the gateway daemon did not answer on {where} ({e.detail}); "
                "see: systemctl status gateway"
            )
        return Refused(f"no usable answer from the gateway daemon on {where}: {e.detail}")


def who_may_use(socket: Path) -> str:
    """Which user and group the socket lets in (as far as we can see), and how to join them."""
    try:
        found = os.stat(socket)
    except OSError:
        found = None
    try:
        folder = os.stat(socket.parent)
    except OSError:
        folder = None
    if found is None and folder is None:
        return "only the gateway daemon's user and group may use it"
    info = found or folder
    assert info is not None
    owner, group = _user_name(info.st_uid), _group_name(info.st_gid)
    if folder is not None and not folder.st_mode & stat.S_IXGRP:
        mode = stat.S_IMODE(folder.st_mode)
        return (
            f"only {owner} may use it ({socket.parent} is mode {mode:04o}; "
            f"chmod 0750 {socket.parent} would let group {_group_name(folder.st_gid)} in)"
        )
    return f"only {owner} and members of group {group} may use it (usermod -aG {group} USER)"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


# -- checks before the call ---------------------------------------------------------------------


def minutes(text: str | None) -> int | None:
    if text is None:
        return None
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= MAX_MINUTES:
        raise UsageError(f"--minutes: {text!r} is not a number of minutes (1 or more)")
    return int(value)


def an_id(text: str, what: str, listing: str) -> str:
    if not ID.fullmatch(text):
        raise UsageError(f"{text!r} is not a {what} id (see: gateway {listing} -c gateway.toml)")
    return text


def targets(names: Sequence[str] | None) -> list[str] | None:
    if not names:
        return None
    for name in names:
        if not TARGET.fullmatch(name):
            raise UsageError(f"--target: {name!r} is not a target name (letters, digits, . _ -)")
    return list(dict.fromkeys(names))


def reason(text: str | None) -> str:
    value = (text or "").strip()
    if len(value) > MAX_REASON or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UsageError(f"--reason: give one line of at most {MAX_REASON} characters")
    return value


def grant_body(args: argparse.Namespace) -> dict[str, Any]:
    """``--minutes``, ``--target`` and ``--view`` as the API's approve and codes bodies."""
    body: dict[str, Any] = {"permission": "view" if args.view else "full"}
    wanted_minutes, wanted_targets = minutes(args.minutes), targets(args.target)
    if wanted_minutes is not None:
        body["minutes"] = wanted_minutes
    if wanted_targets is not None:
        body["targets"] = wanted_targets
    return body


# -- words for people ---------------------------------------------------------------------------


def seconds_of(text: str | None) -> float | None:
    """An ISO time from the API as POSIX seconds."""
    return None if text is None else datetime.fromisoformat(text).timestamp()


def relative(when: float | None, now: float) -> str:
    """``in 12 min``, ``3 min ago``, ``now``; ``no end`` for None."""
    if when is None:
        return "no end"
    delta = when - now
    span = abs(delta)
    if span < 1:
        return "now"
    if span < 60:
        words = f"{int(span)} s"
    elif span < 3600:
        words = f"{round(span / 60)} min"
    elif span < 86400:
        hours, rest = divmod(round(span / 60), 60)
        words = f"{hours} h" + (f" {rest} min" if rest else "")
    else:
        days, rest = divmod(round(span / 3600), 24)
        words = f"{days} d" + (f" {rest} h" if rest else "")
    return f"in {words}" if delta > 0 else f"{words} ago"


def clock_time(when: float) -> str:
    """Local wall-clock time, with the date if it is not today."""
    moment = datetime.fromtimestamp(when)
    if moment.date() == datetime.now().date():
        return moment.strftime("%H:%M")
    return moment.strftime("%Y-%m-%d %H:%M")


def until(text: str | None, now: float) -> str:
    """``until 15:04 (in 60 min)``."""
    when = seconds_of(text)
    if when is None:
        return "with no end"
    return f"until {clock_time(when)} ({relative(when, now)})"


def listed(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "all targets"


def table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [headings, *rows]) for i in range(len(headings))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headings, *rows]
    ]


def print_json(console: Console, answer: Any) -> None:
    console.print(json.dumps(answer, indent=2))


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# -- the commands -------------------------------------------------------------------------------


def access(args: argparse.Namespace, console: Console) -> int:
    mode = args.mode
    if mode is not None and mode not in MODES:
        raise UsageError(f"{mode!r} is not an access mode: use {', '.join(MODES)}")
    client = ControlClient(args.config)
    if mode is None:
        answer = client.get("access")
        if args.json:
            print_json(console, answer)
            return 0
        current = str(answer.get("mode"))
        console.print(f"remote access is {current}: {MODE_WORDS.get(current, '')}".rstrip(": "))
        locked = seconds_of(answer.get("codes_locked_until"))
        if locked is not None:
            console.print(
                f"session codes are locked until {clock_time(locked)} "
                f"({relative(locked, client.clock())}) after too many wrong codes"
            )
        return 0
    answer = client.post("access", {"mode": mode})
    if args.json:
        print_json(console, answer)
        return 0
    ended = list(answer.get("sessions_ended", []))
    if answer.get("previous") == mode:
        line = f"remote access was already {mode}; nothing changed"
    elif mode == "disabled":
        line = "remote access switched off"
    else:
        line = f"remote access is now {mode} (was {answer.get('previous')})"
    if ended:
        line += f"; {plural(len(ended), 'session')} ended"
    console.print(line)
    return 0


def code(args: argparse.Namespace, console: Console) -> int:
    body = grant_body(args)
    client = ControlClient(args.config)
    answer = client.post("codes", body)
    if args.json:
        print_json(console, answer)
        return 0
    now = client.clock()
    kind = "view-only" if answer.get("permission") == "view" else "full"
    console.print()
    console.print(f"    {answer['code']}")
    console.print()
    console.print(
        f"Read this code to the engineer; it works once, {until(answer.get('expires'), now)}."
    )
    console.print(
        f"It opens a {kind} session of {answer.get('minutes')} min on "
        f"{listed(answer.get('targets', []))}: gateway connect ... --code {answer['code']}"
    )
    return 0


def requests(args: argparse.Namespace, console: Console) -> int:
    client = ControlClient(args.config)
    answer = client.get("requests")
    if args.json:
        print_json(console, answer)
        return 0
    if not answer:
        console.print("no requests are waiting")
        return 0
    now = client.clock()
    rows = [
        [
            r["id"],
            r["engineer"],
            relative(seconds_of(r.get("asked")), now),
            relative(seconds_of(r.get("expires")), now),
            listed(r.get("targets", [])),
            r.get("reason", ""),
        ]
        for r in answer
    ]
    for line in table(["REQUEST", "ENGINEER", "ASKED", "ANSWER BY", "TARGETS", "REASON"], rows):
        console.print(line)
    console.print()
    console.print(
        f"approve: gateway approve REQUEST -c {args.config}   "
        f"deny: gateway deny REQUEST --reason TEXT -c {args.config}"
    )
    return 0


def approve(args: argparse.Namespace, console: Console) -> int:
    if args.session is not None:
        return switch_permission(args, console)
    if args.request is None:
        raise UsageError("approve: name a REQUEST, or give --session ID --full|--view")
    if args.full and args.view:
        raise UsageError("approve: --full or --view, not both")
    request_id = an_id(args.request, "request", "requests")
    body = grant_body(args)
    client = ControlClient(args.config)
    session = client.post(f"requests/{quote(request_id)}/approve", body)
    if args.json:
        print_json(console, session)
        return 0
    console.print(
        f"approved {request_id}: {session['engineer']} may use "
        f"{listed(session.get('targets', []))} ({session.get('permission')}) "
        f"{until(session.get('expires'), client.clock())}; session {session['id']}"
    )
    return 0


def switch_permission(args: argparse.Namespace, console: Console) -> int:
    """``approve --session ID --full|--view [--target NAME]...``: switch a live session in place,
    on all its targets or only those named."""
    if args.request is not None:
        raise UsageError("approve: a REQUEST or --session, not both")
    if args.full == args.view:
        raise UsageError("approve --session: give --full or --view")
    if args.minutes is not None:
        raise UsageError("approve --session changes only the permission: leave out --minutes")
    session_id = an_id(args.session, "session", "sessions")
    permission = "full" if args.full else "view"
    body: dict[str, Any] = {"permission": permission}
    if args.target:
        body["targets"] = list(args.target)
    client = ControlClient(args.config)
    answer = client.post(f"sessions/{quote(session_id)}/permission", body)
    if args.json:
        print_json(console, answer)
        return 0
    previous = answer.get("previous")
    if previous == permission:
        console.print(f"session {session_id} already has {permission} access; nothing changed")
        return 0
    per_target = answer.get("target_permissions") or {}
    if len(set(per_target.values())) > 1:
        shown = ", ".join(f"{t} {p}" for t, p in per_target.items())
        console.print(
            f"session {session_id} ({answer.get('engineer')}) is now {shown}; from the next "
            "request on every open connection"
        )
        return 0
    words = (
        "full access: every request goes through"
        if permission == "full"
        else "view-only access: GET, HEAD and OPTIONS only; its connections to tcp targets are "
        "closed"
    )
    console.print(
        f"session {session_id} ({answer.get('engineer')}) now has {words}; from the next request "
        "on every open connection"
    )
    return 0


def deny(args: argparse.Namespace, console: Console) -> int:
    request_id = an_id(args.request, "request", "requests")
    why = reason(args.reason)
    client = ControlClient(args.config)
    answer = client.post(f"requests/{quote(request_id)}/deny", {"reason": why})
    if args.json:
        print_json(console, answer)
        return 0
    engineer = answer.get("engineer")
    line = f"denied {request_id}" + (f" from {engineer}" if engineer else "")
    console.print(line + (f"; they are told: {why}" if why else ""))
    return 0


def sessions(args: argparse.Namespace, console: Console) -> int:
    client = ControlClient(args.config)
    answer = client.get("sessions")
    if args.json:
        print_json(console, answer)
        return 0
    if not answer:
        console.print("no live sessions")
        return 0
    now = client.clock()
    rows = [
        [
            s["id"],
            s["engineer"],
            listed(s.get("targets", [])),
            str(s.get("permission", "")),
            relative(seconds_of(s.get("started")), now),
            relative(seconds_of(s.get("expires")), now),
            str(s.get("approved_by", "")),
            str(len(s.get("connections", []))),
            s.get("reason", ""),
        ]
        for s in answer
    ]
    headings = ["SESSION", "ENGINEER", "TARGETS", "PERMISSION", "STARTED", "ENDS"]
    headings += ["APPROVED BY", "CONNECTIONS", "REASON"]
    for line in table(headings, rows):
        console.print(line)
    recent = recent_requests(client)
    for s in answer:
        shown = recent.get(s["id"], [])[-RECENT_SHOWN:]
        if shown:
            console.print()
            console.print(f"last requests of {s['id']} (gateway audit --session {s['id']}):")
            for line in table(["", "TIME", "TARGET", "REQUEST", "RESULT"], request_rows(shown)):
                console.print(line)
    console.print()
    console.print(f"end one: gateway end SESSION -c {args.config}   end all: gateway end --all")
    console.print(f"view or full: gateway approve --session SESSION --view|--full -c {args.config}")
    return 0


RECENT_SHOWN = 5
"""Requests shown under each session by ``gateway sessions``."""


def recent_requests(client: ControlClient) -> dict[str, list[dict[str, Any]]]:
    """Each session's recent requests on http targets, from the status JSON ({} if none)."""
    try:
        status = client.get("status")
    except (Refused, UsageError):
        return {}
    if not isinstance(status, dict):
        return {}
    return {
        str(s.get("id")): list(s.get("recent_requests") or [])
        for s in status.get("sessions", [])
        if isinstance(s, dict)
    }


def request_rows(requests: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in requests:
        when = seconds_of(r.get("at"))
        result = str(r.get("result", ""))
        if r.get("status") is not None:
            result += f" {r['status']}"
        if r.get("result") == "refused" and r.get("why"):
            result += f": {r['why']}"
        rows.append(
            [
                " ",
                "" if when is None else datetime.fromtimestamp(when).strftime("%H:%M:%S"),
                str(r.get("target", "")),
                f"{r.get('method', '')} {r.get('path', '')}",
                result,
            ]
        )
    return rows


def end(args: argparse.Namespace, console: Console) -> int:
    if (args.session is None) == (not args.all):
        raise UsageError("end: name one SESSION or give --all")
    session_id = None if args.all else an_id(args.session, "session", "sessions")
    why = reason(args.reason)
    client = ControlClient(args.config)
    if session_id is None:
        ended = client.post("sessions/end-all", {"reason": why})
        if args.json:
            print_json(console, ended)
        elif not ended:
            console.print("no live sessions to end")
        else:
            names = ", ".join(f"{s['id']} ({s['engineer']})" for s in ended)
            console.print(f"ended {plural(len(ended), 'session')}: {names}")
        return 0
    session = client.post(f"sessions/{quote(session_id)}/end", {"reason": why})
    if args.json:
        print_json(console, session)
        return 0
    console.print(f"ended {session['id']} ({session['engineer']}); its connections are closing")
    return 0


# -- the parsers --------------------------------------------------------------------------------


def register(commands: Commands) -> None:
    def add(name: str, handler: Any, summary: str, example: str) -> argparse.ArgumentParser:
        parser = commands.add(
            name,
            handler,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}, on the running gateway daemon "
            f"(through STATE_DIR/{CONTROL_SOCKET}).  Exit codes: 0 done, 1 refused, "
            "2 a mistake in the command or no permission, 3 the daemon is not running.",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument(
            "-c", "--config", required=True, type=Path, help="gateway.toml (for its state_dir)"
        )
        parser.add_argument("--json", action="store_true", help="print the answer as JSON")
        return parser

    def grant_options(parser: argparse.ArgumentParser, what: str) -> None:
        parser.add_argument(
            "--minutes", metavar="N", help=f"length of the {what} (default: session_minutes)"
        )
        parser.add_argument(
            "--target",
            metavar="NAME",
            action="append",
            help="a target it covers (repeat for more; default: every allowlisted target)",
        )
        parser.add_argument("--view", action="store_true", help="view permission, not full")

    parser = add(
        "access",
        access,
        "show the remote access mode, or set it",
        "gateway access disabled -c /etc/gateway/gateway.toml",
    )
    parser.add_argument("mode", nargs="?", metavar="MODE", help=" | ".join(MODES))

    parser = add(
        "code",
        code,
        "make a single-use 6-digit session code to read out to an engineer",
        "gateway code -c /etc/gateway/gateway.toml --minutes 30 --target web",
    )
    grant_options(parser, "session it opens")

    add(
        "requests",
        requests,
        "list engineers' requests waiting for an answer",
        "gateway requests -c /etc/gateway/gateway.toml",
    )

    parser = add(
        "approve",
        approve,
        "let an engineer in: approve a waiting request (or switch a live session's permission)",
        "gateway approve r-4f2a9c -c /etc/gateway/gateway.toml --minutes 30 --target web\n"
        "  gateway approve --session s-81be07 --full -c /etc/gateway/gateway.toml",
    )
    parser.add_argument(
        "request", metavar="REQUEST", nargs="?", help="the request's id (gateway requests)"
    )
    grant_options(parser, "session")
    parser.add_argument(
        "--session",
        metavar="ID",
        help="switch this live session (gateway sessions) to --full or --view, in place",
    )
    parser.add_argument("--full", action="store_true", help="full permission (the default)")

    parser = add(
        "deny",
        deny,
        "say no to a waiting request; the engineer is told the reason",
        'gateway deny r-4f2a9c -c /etc/gateway/gateway.toml --reason "not during the shift"',
    )
    parser.add_argument("request", metavar="REQUEST", help="the request's id (gateway requests)")
    parser.add_argument("--reason", metavar="TEXT", help="shown to the engineer")

    add(
        "sessions",
        sessions,
        "list live sessions with their connections",
        "gateway sessions -c /etc/gateway/gateway.toml",
    )

    parser = add(
        "end",
        end,
        "end a session (or --all) now; its connections close and the engineer is told why",
        'gateway end s-81be07 -c /etc/gateway/gateway.toml --reason "done for today"',
    )
    parser.add_argument(
        "session", metavar="SESSION", nargs="?", help="the session's id (gateway sessions)"
    )
    parser.add_argument("--all", action="store_true", help="end every live session")
    parser.add_argument("--reason", metavar="TEXT", help="shown to the engineer")
