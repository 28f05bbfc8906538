"""The gateway decides: which streams the relay may open, and to which processor.

Deny by default.  A stream is allowed only when the access mode allows remote access right now and
its target name is on the allowlist in gateway.toml; the address always comes from the gateway's
own configuration, never from the relay, so nothing else on the plant network is reachable.

The decision looks at a whole request (``AccessRequest``: who, in which session, to what, with
which permission, on which connection, when), not just a target name, so that attended sessions
can be checked here without changing the callers: the relay's word on any of it is only a claim.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from attrs import frozen

from gateway.config import AccessMode, Target
from gateway.wire import Refusal


class Permission(enum.Enum):
    """What a session lets the engineer do on a target (BRIEF section 3)."""

    FULL = "full"
    VIEW = "view"


@frozen
class AccessRequest:
    """One stream (or, later, control request) as the decision sees it."""

    target: str
    """The target name the relay asked for (``:authority``); only a name, never an address."""
    engineer: str
    """The engineer identity as the relay authenticated it."""
    connection_id: str
    at: float
    """When it was asked (the daemon's clock, seconds)."""
    session: str | None = None
    """The session the stream claims to belong to; the gateway checks it is live and its own."""
    permission: Permission = Permission.FULL


@frozen
class Allowed:
    target: Target
    session: str | None = None
    """The live session that allowed the stream (None in unattended mode)."""


@frozen
class Refused:
    refusal: Refusal
    reason: str


ModeListener = Callable[[AccessMode, AccessMode], None]
"""Called with (old, new) after the mode changed."""


class AccessPolicy:
    """Allowlist plus access mode; the mode can change while the daemon runs."""

    def __init__(
        self,
        targets: tuple[Target, ...],
        mode: AccessMode,
        on_mode_change: ModeListener | None = None,
    ) -> None:
        self._targets = {t.name: t for t in targets}
        self._mode = mode
        self._on_mode_change = on_mode_change

    @property
    def mode(self) -> AccessMode:
        return self._mode

    @property
    def target_names(self) -> list[str]:
        return sorted(self._targets)

    def set_mode(self, mode: AccessMode) -> AccessMode:
        """Switch the mode for every stream asked for from now on; returns the old mode.

        The listener hears every change: it is where streams that the new mode no longer allows
        will be ended (``disabled`` ends every live stream) and where the change is audited.
        """
        old, self._mode = self._mode, mode
        if old is not mode and self._on_mode_change is not None:
            self._on_mode_change(old, mode)
        return old

    def decide(self, request: AccessRequest) -> Allowed | Refused:
        if self._mode is AccessMode.DISABLED:
            return Refused(Refusal.ACCESS_DISABLED, "remote access is switched off on this gateway")
        target = self._targets.get(request.target)
        if target is None:
            return Refused(
                Refusal.TARGET_NOT_ALLOWED,
                f"target {request.target!r} is not in this gateway's allowlist",
            )
        if self._mode is AccessMode.ATTENDED:
            # Sessions will be looked up here: request.session, live, granted to
            # request.engineer, covering target and permission.
            return Refused(
                Refusal.SESSION_REQUIRED,
                "this gateway is in attended mode: remote access needs a session approved on "
                "the plant's status page, and attended sessions are not available in this "
                "release; ask the plant to switch to unattended mode",
            )
        return Allowed(target)
