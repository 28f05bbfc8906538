"""The gateway decides: which streams the relay may open, and to which processor.

Deny by default.  A stream is allowed only when the access mode allows remote access right now and
its target name is on the allowlist in gateway.toml; the address always comes from the gateway's
own configuration, never from the relay, so nothing else on the plant network is reachable.

The decision looks at a whole request (``AccessRequest``: who, in which session, to what, with
which permission, on which connection, when), not just a target name: the relay's word on any of
it is only a claim.  In order: the mode (``disabled`` refuses all), the allowlist, then the
session.  Sessions are looked up through ``ISessionLookup`` (the consent service): a stream that
names a session is held to it in every mode (live, granted to the engineer the relay
authenticated, covering the target); in ``attended`` mode a stream must name one; in
``unattended`` mode a stream that names none joins its engineer's implicit session, so that plant
staff still see and can end it.  Without a lookup (tests of the bare allowlist) no session exists:
``attended`` refuses every stream and ``unattended`` streams belong to no session.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from attrs import frozen
from zope.interface import Interface

from gateway.config import AccessMode, Target, TargetKind
from gateway.wire import Refusal

ATTENDED_NEEDS_A_SESSION = (
    "this gateway is in attended mode: remote access needs a session approved on the plant's "
    "status page or with `gateway approve`; ask for one with `gateway connect --reason ...`, "
    "or use a code the plant reads out to you: `gateway connect --code ...`"
)


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
    """The live session that allowed the stream (None only without a session lookup)."""


@frozen
class Refused:
    refusal: Refusal
    reason: str


@frozen
class Grant:
    """What the decision needs to know of a live session."""

    session: str
    engineer: str
    targets: frozenset[str]
    permission: Permission
    per_target: tuple[tuple[str, Permission], ...] = ()
    """Targets with another permission than ``permission`` (``consent.Session.per_target``)."""

    def permission_on(self, target: str) -> Permission:
        return (
            dict(self.per_target).get(target, self.permission)
            if self.per_target
            else (self.permission)
        )


class ISessionLookup(Interface):
    """Live sessions, as the access decision asks about them (the consent service answers)."""

    def grant(session_id: str) -> Grant | None:
        """The live session ``session_id``, or None if there is none (ended, expired, unknown)."""

    def implicit_session(engineer: str) -> Grant | Refused:
        """``unattended`` mode: the engineer's implicit session, made on first use; Refused when
        no new session may be made (the audit trail cannot be written)."""


ModeListener = Callable[[AccessMode, AccessMode], None]
"""Called with (old, new) after the mode changed."""


class AccessPolicy:
    """Allowlist plus access mode; the mode can change while the daemon runs."""

    def __init__(
        self,
        targets: tuple[Target, ...],
        mode: AccessMode,
        on_mode_change: ModeListener | None = None,
        sessions: ISessionLookup | None = None,
    ) -> None:
        self._targets = {t.name: t for t in targets}
        self._mode = mode
        self._on_mode_change = on_mode_change
        self.sessions = sessions
        """Set once by the composition root (the consent service needs the policy too)."""

    @property
    def mode(self) -> AccessMode:
        return self._mode

    @property
    def target_names(self) -> list[str]:
        return sorted(self._targets)

    def target(self, name: str) -> Target | None:
        return self._targets.get(name)

    def set_targets(self, targets: tuple[Target, ...]) -> None:
        """A new allowlist (a reloaded gateway.toml) for every stream asked for from now on;
        the reload ends the live streams to targets that left it."""
        self._targets = {t.name: t for t in targets}

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
        sessions = self.sessions
        if sessions is None:
            if self._mode is AccessMode.ATTENDED:
                return Refused(Refusal.SESSION_REQUIRED, ATTENDED_NEEDS_A_SESSION)
            return Allowed(target)
        if request.session is not None:
            grant = sessions.grant(request.session)
            problem = _session_problem(grant, request, target)
            if problem is not None:
                return problem
            return Allowed(target, request.session)
        if self._mode is AccessMode.ATTENDED:
            return Refused(Refusal.SESSION_REQUIRED, ATTENDED_NEEDS_A_SESSION)
        implicit = sessions.implicit_session(request.engineer)
        if isinstance(implicit, Refused):
            return implicit
        return Allowed(target, implicit.session)


def _session_problem(grant: Grant | None, request: AccessRequest, target: Target) -> Refused | None:
    """Why the session a stream names does not let it through (None: it does).

    Another engineer's session reads as not live: a session id is not a secret (the status page
    and the relay's support view show it), so it must never work for anyone but its holder, and
    the refusal says no more than that.  ``view`` lets a session use only ``http`` targets (whose
    requests the gateway follows, `gateway.edge.httpstreams`): never a ``tcp`` one.
    """
    if grant is None or grant.engineer != request.engineer:
        return Refused(
            Refusal.SESSION_ENDED,
            f"session {request.session} is not live on this gateway (it ended, expired, or "
            "is not yours); ask the plant for a new one",
        )
    if request.target not in grant.targets:
        granted = ", ".join(sorted(grant.targets))
        return Refused(
            Refusal.TARGET_NOT_ALLOWED,
            f"session {grant.session} does not cover target {request.target!r} "
            f"(it covers: {granted})",
        )
    if grant.permission_on(target.name) is Permission.VIEW and target.kind is TargetKind.TCP:
        return Refused(Refusal.PERMISSION_DENIED, view_on_tcp_reason(grant.session, target.name))
    return None


def target_access(permission: Permission, target: Target) -> str:
    """What a session of ``permission`` may do on ``target``, in a word for the status JSON:
    ``full``, ``view``, ``view+websocket`` or ``none`` (a view-only session on a tcp target)."""
    if permission is Permission.FULL:
        return "full"
    if target.kind is TargetKind.TCP:
        return "none"
    return "view+websocket" if target.view_websocket else "view"


def view_on_tcp_reason(session: str, target: str) -> str:
    return (
        f"session {session} is view-only, and {target!r} is a tcp target: the gateway cannot "
        "tell reading from writing there, so only a session with full access can use it"
    )
