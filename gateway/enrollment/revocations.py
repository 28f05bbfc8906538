"""Revoked gateways: by id (every certificate naming it, for good) or by certificate serial.

``gateway relay revoke ID`` writes ``STATE_DIR/enrollment/revoked.json``; the running relay
reads it twice a second (`gateway.relay.revoked`) and cuts a revoked gateway's live tunnel, and
refuses its tunnels, renewals and enrollment from then on.  An id stays revoked: a replacement
edge PC is enrolled under a new id.  ``--serial HEX`` revokes one certificate only (one that
leaked, or the one before a renewal) and leaves the gateway's others working.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gateway.enrollment.files import folder, locked, read_json, write_json

FILE = "revoked.json"


def _empty() -> dict[str, Any]:
    return {"gateways": {}, "serials": {}}


def serial_text(serial: int) -> str:
    return f"{serial:x}"


def revoke(state_dir: Path, gateway_id: str, *, now: float, serial: str | None = None) -> bool:
    """Record the revocation; False if it was recorded already."""
    with locked(state_dir) as where:
        data = read_json(where / FILE, _empty)
        data.setdefault("gateways", {})
        data.setdefault("serials", {})
        if serial is None:
            if gateway_id in data["gateways"]:
                return False
            data["gateways"][gateway_id] = {"revoked": now}
        else:
            key = serial.lower().removeprefix("0x").lstrip("0") or "0"
            if key in data["serials"]:
                return False
            data["serials"][key] = {"gateway": gateway_id, "revoked": now}
        write_json(where / FILE, data)
    return True


class Revocations:
    """The revocation list as the relay knows it; `refresh` re-reads the file when it changed.

    An unreadable file keeps the last good list (and says so in `problem`): a broken file must
    not let a revoked gateway back in.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = folder(state_dir) / FILE
        self.gateways: frozenset[str] = frozenset()
        self.serials: frozenset[str] = frozenset()
        self.problem: str | None = None
        self._seen: tuple[int, int, int] | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Re-read if the file changed; True if the list changed."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return False
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stamp == self._seen:
            return False
        try:
            data = read_json(self.path, _empty)
            gateways = frozenset(str(k) for k in data.get("gateways", {}))
            serials = frozenset(str(k) for k in data.get("serials", {}))
        except (OSError, ValueError, AttributeError) as e:
            self.problem = f"{self.path}: {e}"
            return False
        self._seen, self.problem = stamp, None
        changed = (gateways, serials) != (self.gateways, self.serials)
        self.gateways, self.serials = gateways, serials
        return changed

    def why_revoked(self, gateway_id: str, serial: int | None) -> str | None:
        """Why this gateway or certificate is refused, or None."""
        if gateway_id in self.gateways:
            return f"gateway {gateway_id!r} was revoked by the vendor"
        if serial is not None and serial_text(serial) in self.serials:
            return f"this certificate of gateway {gateway_id!r} (serial {serial:x}) was revoked"
        return None


def listed(state_dir: Path) -> dict[str, Any]:
    """The list as written: ``{"gateways": {id: {"revoked"}}, "serials": {hex: {...}}}``."""
    data = read_json(folder(state_dir) / FILE, _empty)
    return {"gateways": dict(data.get("gateways", {})), "serials": dict(data.get("serials", {}))}
