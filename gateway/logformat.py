"""How the daemons' log lines look: for a terminal, for the journal, or as JSON lines.

* **text** (the default at a terminal): Twisted's classic lines,
  ``2026-01-05T10:00:00+0000 [namespace#info] message``;
* **journal** (stderr is the journal's stream, ``JOURNAL_STREAM`` names it): no timestamp, the
  journal stamps each line itself; every line starts with its syslog priority, ``<3>`` for an
  error, ``<4>`` a warning, ``<6>`` info, ``<7>`` debug (sd-daemon(3)), so ``journalctl -p
  warning`` filters and colours them;
* **json** (``--log-format json``): one object a line, ``time``, ``level``, ``message``,
  ``namespace`` and, when the event names them, ``gateway_id``, ``session``, ``engineer``,
  ``target`` (for a log shipper to index).  Under the journal each line carries the priority
  prefix as well.

Only these fields leave the process: never the event's other keys, which may hold anything a
caller handed the logger.  The fields are strings made printable and bounded by
`gateway.logsafe.peer_text` (a target name comes from the relay, so from a peer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    eventAsText,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

from gateway.logsafe import peer_text

PRIORITIES = {
    LogLevel.critical: 2,
    LogLevel.error: 3,
    LogLevel.warn: 4,
    LogLevel.info: 6,
    LogLevel.debug: 7,
}
"""Twisted's levels as syslog priorities (crit, err, warning, info, debug)."""

FIELDS = {
    "gateway_id": "gateway_id",
    "gw": "gateway_id",
    "session": "session",
    "engineer": "engineer",
    "target": "target",
}
"""Event keys (as the code logs them) -> the structured field they fill."""

FIELD_LIMIT = 128


def journal_stream(environ: Mapping[str, str], stream: Any) -> bool:
    """Whether ``stream`` is the journal's: ``JOURNAL_STREAM`` (``DEVICE:INODE``, set by
    systemd for a unit whose output goes to the journal) names the very file ``stream`` writes
    to.  A child that inherited the variable but writes elsewhere (a terminal, a file) is not
    under the journal, and keeps its timestamps."""
    value = environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def _level(event: LogEvent) -> Any:
    """The event's `LogLevel` constant (info if it has none)."""
    level = event.get("log_level")
    return level if level in PRIORITIES else LogLevel.info


def priority(event: LogEvent) -> int:
    return PRIORITIES.get(_level(event), 6)


def fields(event: LogEvent) -> dict[str, str]:
    """The structured fields the event names (see `FIELDS`), printable and bounded."""
    found: dict[str, str] = {}
    for key, name in FIELDS.items():
        value = event.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and name not in found:
            found[name] = peer_text(str(value), FIELD_LIMIT)
    return found


def _text(event: LogEvent) -> str:
    text = eventAsText(event, includeTimestamp=False, includeSystem=False, includeTraceback=True)
    return text.rstrip("\n")


def _system(event: LogEvent) -> str:
    """As Twisted's classic lines name it: ``log_system``, else ``namespace#level``."""
    system = event.get("log_system")
    if system is not None:
        return str(system)
    level = event.get("log_level")
    return f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"


def _time(event: LogEvent) -> datetime:
    stamp = event.get("log_time")
    return datetime.fromtimestamp(stamp if isinstance(stamp, int | float) else 0, UTC)


def format_text(event: LogEvent, *, journal: bool) -> str | None:
    """One event as text lines (None: nothing to show).  At a terminal, Twisted's classic
    lines; under the journal no timestamp, and the priority on each line of a traceback too, as
    the journal makes each line an entry of its own."""
    if not journal:
        return formatEventAsClassicLogText(event)
    text = _text(event)
    if not text:
        return None
    prefix = f"<{priority(event)}>"
    first, *rest = text.split("\n")
    head = f"{prefix}[{_system(event)}] {first}"
    return "\n".join([head, *(f"{prefix}\t{line}" for line in rest)]) + "\n"


def format_json(event: LogEvent, *, journal: bool) -> str | None:
    """One event as one JSON object on one line (None: nothing to show)."""
    text = _text(event)
    if not text:
        return None
    record: dict[str, Any] = {
        "time": _time(event).isoformat(timespec="milliseconds"),
        "level": getattr(_level(event), "name", "info"),
        "message": text,
        "namespace": str(event.get("log_namespace") or "-"),
        **fields(event),
    }
    line = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    return (f"<{priority(event)}>" if journal else "") + line + "\n"


@implementer(ILogObserver)
class LineObserver:
    """Writes each event to ``stream`` as `format_text` or `format_json` lines."""

    def __init__(self, stream: TextIO, *, json_lines: bool, journal: bool) -> None:
        self._stream = stream
        self._format = format_json if json_lines else format_text
        self.journal = journal

    def __call__(self, event: LogEvent) -> None:
        try:
            text = self._format(event, journal=self.journal)
        except Exception:  # a bad format string must not lose the line, nor raise in a logger
            text = f"<3>unformattable log event {event.get('log_format')!r}\n"
            text = text if self.journal else text[3:]
        if text is None:
            return
        self._stream.write(text)
        self._stream.flush()
