"""The gateway decides: which streams the relay may open, and to which processor.

Deny by default.  A stream is allowed only when the access mode allows remote access right now and
its target name is on the allowlist in gateway.toml; the address always comes from the gateway's
own configuration, never from the relay, so nothing else on the plant network is reachable.
"""

from __future__ import annotations

from attrs import frozen

from gateway.config import AccessMode, Target
from gateway.wire import Refusal


@frozen
class Allowed:
    target: Target


@frozen
class Refused:
    refusal: Refusal
    reason: str


class AccessPolicy:
    """Allowlist plus access mode; the mode can change while the daemon runs."""

    def __init__(self, targets: tuple[Target, ...], mode: AccessMode) -> None:
        self._targets = {t.name: t for t in targets}
        self.mode = mode

    @property
    def target_names(self) -> list[str]:
        return sorted(self._targets)

    def decide(self, target_name: str) -> Allowed | Refused:
        if self.mode is AccessMode.DISABLED:
            return Refused(Refusal.ACCESS_DISABLED, "remote access is switched off on this gateway")
        target = self._targets.get(target_name)
        if target is None:
            return Refused(
                Refusal.TARGET_NOT_ALLOWED,
                f"target {target_name!r} is not in this gateway's allowlist",
            )
        if self.mode is AccessMode.ATTENDED:
            return Refused(
                Refusal.SESSION_REQUIRED,
                "this gateway is in attended mode: remote access needs a session approved on "
                "the plant's status page, and attended sessions are not available in this "
                "release; ask the plant to switch to unattended mode",
            )
        return Allowed(target)
