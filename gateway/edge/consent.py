"""The plant's control over remote access: the one interface its three faces call.

Plant staff act through the control socket (``gateway access|code|requests|approve|deny|sessions|
end``), the status page's JSON API, and (for engineers) the tunnel's session requests.  All three
are thin adapters over one `IConsent` service (``gateway.edge.sessions.ConsentService``), so a rule
is enforced once: who may approve what, for how long, which code is valid, when a session ends.

Everything here is plain data and an interface; the service holds the state and the clock.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred
from zope.interface import Interface

from gateway.config import AccessMode
from gateway.edge.access import Permission
from gateway.wire import Refusal, SessionAsk, SessionEvent

__all__ = [
    "GATEWAY",
    "Actor",
    "CodeGrant",
    "ConsentRefused",
    "EngineerRefused",
    "IConsent",
    "IEngineerSessions",
    "ISessionChannel",
    "PendingRequest",
    "Permission",
    "Session",
]


@frozen
class Actor:
    """Who did something, as the audit trail and the status page name them.

    ``kind`` is ``"operator"`` (plant staff: control socket user, status page on loopback, or a
    logged-in operator), ``"engineer"`` (as the relay authenticated them) or ``"gateway"`` (the
    daemon itself: expiry, grace period, mode switched off).
    """

    kind: str
    name: str
    address: str | None = None

    def __str__(self) -> str:
        return self.name if self.address is None else f"{self.name} ({self.address})"


GATEWAY = Actor("gateway", "gateway")


@frozen
class PendingRequest:
    """An engineer's request for a session, waiting for the plant (BRIEF status JSON)."""

    id: str
    engineer: str
    reason: str
    targets: tuple[str, ...]
    asked: float
    expires: float


@frozen
class Session:
    """A live session: one engineer, some targets, a permission, an expiry."""

    id: str
    engineer: str
    reason: str
    targets: tuple[str, ...]
    permission: Permission
    started: float
    expires: float | None
    """None: no expiry (the implicit sessions of ``unattended`` mode)."""
    approved_by: str
    """Who let the engineer in: an operator, ``code 123...`` (never the whole code), or
    ``unattended mode``."""
    implicit: bool = False
    connections: tuple[str, ...] = ()
    """The ids of the session's open connections (``wire.CONNECTION_ID_HEADER``), as listed."""
    per_target: tuple[tuple[str, Permission], ...] = ()
    """Targets on which the plant set another permission than ``permission`` (e.g. ``view`` on
    the HMI while the line runs, ``full`` on the camera)."""

    def permission_on(self, target: str) -> Permission:
        return dict(self.per_target).get(target, self.permission)


@frozen
class CodeGrant:
    """A single-use session code, as shown once to the member of staff who created it."""

    code: str
    """6 digits; shown to its creator once, never stored in clear nor listed afterwards."""
    targets: tuple[str, ...]
    permission: Permission
    minutes: int
    """Length of the session the code opens."""
    expires: float
    """When the code itself stops working (10 minutes after it was made)."""
    id: str = ""
    """``c-...``: names the code in the audit trail (``code.created``, ``code.used``) without it."""


class ConsentRefused(Exception):
    """An action that cannot be done, with the reason to show (CLI exit 1, API 4xx).

    ``kind`` is a short machine token (``unknown-request``, ``already-decided``,
    ``bad-minutes``, ``target-not-allowed``, ``unknown-session``, ``audit-unavailable``, ...).
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class EngineerRefused(Exception):
    """An engineer's session request refused: answered on the tunnel as ``refusal`` + ``reason``."""

    def __init__(self, refusal: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.refusal = refusal
        self.reason = reason


class IConsent(Interface):
    """The plant's side: modes, requests, codes and sessions.  Every call is audited.

    Methods raise `ConsentRefused` for anything that cannot be done; nothing is half done then.
    """

    def mode() -> AccessMode:
        """The access mode in force."""

    def set_mode(mode: AccessMode, by: Actor) -> AccessMode:
        """Switch the mode (persisted in the state directory); returns the old one.

        ``disabled`` ends every live session and stream within a second.
        """

    def requests() -> list[PendingRequest]:
        """Requests waiting for an answer, oldest first."""

    def approve(
        request_id: str,
        by: Actor,
        minutes: int | None = None,
        targets: tuple[str, ...] | None = None,
        permission: Permission = Permission.FULL,
    ) -> Session:
        """Let the engineer in: a session for ``minutes`` (default ``session_minutes``, at most
        ``max_session_minutes``) on ``targets`` (default: all allowlisted)."""

    def deny(request_id: str, by: Actor, reason: str = "") -> None:
        """Say no; the engineer is told ``reason``."""

    def create_code(
        by: Actor,
        minutes: int | None = None,
        targets: tuple[str, ...] | None = None,
        permission: Permission = Permission.FULL,
    ) -> CodeGrant:
        """A fresh single-use 6-digit code, valid 10 minutes, for a session of ``minutes``."""

    def code_entry_locked_until() -> float | None:
        """After 5 wrong codes in 10 minutes: when code entry opens again (else None)."""

    def sessions() -> list[Session]:
        """Live sessions, oldest first."""

    def end(session_id: str, by: Actor, reason: str = "") -> Session:
        """End a session now: its streams close within a second and the engineer is told why."""

    def end_all(by: Actor, reason: str = "") -> list[Session]:
        """End every live session."""

    def set_permission(
        session_id: str, permission: Permission, by: Actor, targets: tuple[str, ...] = ()
    ) -> Session:
        """Switch a live session between ``view`` and ``full``: the next request on each of its
        open connections is decided under the new permission; a switch to ``view`` ends its
        connections to ``tcp`` targets (the gateway cannot hold them to it)."""

    def when_changed() -> Deferred[None]:
        """Fires at the next change of mode, requests or sessions (for live pages and SSE)."""


class ISessionChannel(Interface):
    """The engineer's end of one session stream (``POST wire.SESSION_PATH``), as the service
    writes to it: JSON lines, then the end."""

    def send(event: SessionEvent) -> None:
        """Tell the engineer ``event`` (one line)."""

    def close() -> None:
        """End the stream once what was sent has gone (after DENIED or ENDED)."""


class IEngineerSessions(Interface):
    """The engineer's side, as the tunnel's session route calls it.

    The channel staying open is the engineer's presence: when it goes (``channel_lost``) a
    waiting request is withdrawn, and a session's grace period starts.
    """

    def ask(engineer: str, ask: SessionAsk, channel: ISessionChannel) -> None:
        """Take a request (reason), a code, a resume or (unattended) a bare ask from
        ``engineer`` as the relay authenticated it; events go to ``channel``.  Raises
        `EngineerRefused` (nothing sent on the channel then)."""

    def channel_lost(channel: ISessionChannel) -> None:
        """The stream behind ``channel`` ended (the engineer's client or the relay went away)."""
