"""The last audit events, for the status page's "Recent events": a tee in front of the trail.

Every record still goes to the trail first (a failed write raises as before and is not shown);
a copy of the records people care about, cut down to fields that can be shown to anyone at the
page (`SHOWN`: never a token, key, password or code, which the trail holds none of anyway), is
kept in memory, the last `KEEP`.  At start the copy is seeded from the end of the trail's current
file, so a restart does not empty the list.  Per-request records of web targets are left out:
the page shows them per session.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from gateway.audit import IAuditTrail
from gateway.auditlog.files import CURRENT, audit_folder
from gateway.edge.status import iso

__all__ = ["KEEP", "SHOWN", "RecentAudit"]

KEEP = 20
HIDDEN_EVENTS = frozenset({"http.request", "http.summary", "audit.suppressed", "audit.rotated"})
SHOWN = (
    "engineer",
    "target",
    "targets",
    "session",
    "request",
    "reason",
    "why",
    "old",
    "new",
    "permission",
    "minutes",
    "until",
)
"""Detail fields a recent event may carry onto the page."""
SEED_BYTES = 256 * 1024


def _shown(record: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "time": record.get("time"),
        "event": record.get("event"),
        "who": record.get("who"),
        "result": record.get("result", "ok"),
    }
    for key in SHOWN:
        value = record.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            shown[key] = value if not isinstance(value, str) else value[:200]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            shown[key] = [v[:64] for v in value[:16]]
    return shown


@implementer(IAuditTrail)
class RecentAudit:
    def __init__(self, trail: IAuditTrail, clock: IReactorTime, keep: int = KEEP) -> None:
        self._trail = trail
        self._clock = clock
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep)

    @property
    def healthy(self) -> bool:
        return bool(self._trail.healthy)

    def record(
        self, event: str, *, who: str | None = None, result: str = "ok", **details: Any
    ) -> None:
        self._trail.record(event, who=who, result=result, **details)
        if event not in HIDDEN_EVENTS:
            self._recent.append(
                _shown(
                    {
                        "time": iso(self._clock.seconds()),
                        "event": event,
                        "who": who,
                        "result": result,
                        **details,
                    }
                )
            )

    def seed(self, state_dir: Path) -> None:
        """The last events of the trail's current file (what a restart would otherwise lose)."""
        path = audit_folder(state_dir) / CURRENT
        try:
            with path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - SEED_BYTES))
                tail = f.read().splitlines()
        except OSError:
            return
        found: list[dict[str, Any]] = []
        for line in tail[1:] if len(tail) > 1 and size > SEED_BYTES else tail:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") not in HIDDEN_EVENTS:
                found.append(_shown(record))
        for record in found[-(self._recent.maxlen or KEEP) :]:
            self._recent.append(record)

    def recent(self) -> list[dict[str, Any]]:
        """Newest first."""
        return list(reversed(self._recent))
