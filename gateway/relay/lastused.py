"""When each engineer last got in: ``last-used.json`` in the relay's state directory.

Shown by ``gateway relay engineers`` so that the vendor can see which tokens are still needed.
Kept apart from ``engineers.toml`` on purpose: the relay never rewrites the credential file, and a
login only updates a dictionary in memory.  The file is written (atomically) by the relay's
access watch at most once a minute, and once more when the relay stops.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway._files import FileWriteError, write_private

log = Logger()

FILE_NAME = "last-used.json"
WRITE_INTERVAL = 60.0


def last_used_path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def read_last_used(path: Path) -> dict[str, float]:
    """``{name: POSIX time}``; an absent or unreadable file is an empty record (it is only
    informational)."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    times: dict[str, float] = {}
    for name, when in data.items():
        if isinstance(name, str) and isinstance(when, str):
            try:
                times[name] = datetime.fromisoformat(when).timestamp()
            except ValueError:
                continue
    return times


class LastUsed:
    """Each engineer's last successful login, in memory; written out by `flush`."""

    def __init__(self, path: Path, clock: IReactorTime, interval: float = WRITE_INTERVAL):
        self.path = path
        self.clock = clock
        self.interval = interval
        self._times = read_last_used(path)
        self._dirty = False
        self._written = -math.inf
        self._failing = False

    def touch(self, name: str) -> None:
        """The hot path: a dictionary update, nothing else."""
        self._times[name] = self.clock.seconds()
        self._dirty = True

    def get(self, name: str) -> float | None:
        return self._times.get(name)

    def flush(self, *, keep: Collection[str] | None = None, force: bool = False) -> bool:
        """Write the file if something changed and a minute has passed (or ``force``); True if
        written.  ``keep``: the names (case-folded) still listed; the others are dropped."""
        now = self.clock.seconds()
        if not self._dirty or (not force and now - self._written < self.interval):
            return False
        if keep is not None:
            self._times = {n: t for n, t in self._times.items() if n.casefold() in keep}
        body = {
            name: datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
            for name, when in sorted(self._times.items())
        }
        self._written = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(self.path, json.dumps(body, indent=1) + "\n")
        except (FileWriteError, OSError) as e:
            if not self._failing:
                log.warn("cannot record when engineers last logged in: {error}", error=str(e))
            self._failing = True
            return False
        self._failing = False
        self._dirty = False
        return True
