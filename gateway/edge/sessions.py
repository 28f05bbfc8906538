"""The consent service: the one place that decides who is let in, for how long, and when it ends.

It implements the plant's side (`IConsent`: modes, requests, approve/deny, codes, sessions, end),
the engineer's side (`IEngineerSessions`: the tunnel's session route) and the session lookup the
access decision asks for every stream (`ISessionLookup`).  The control socket, the status page's
JSON API and the tunnel are thin adapters over it, so each rule is said once here.

Requests and sessions are explicit state machines (`RequestState`, `SessionState`): each move is
checked against the moves allowed, logged, audited and told to the daemon's events.  Every time
limit runs on the injected clock: a request expires after ``request_timeout``, a session at its
expiry, a session whose engineer has gone (no session stream and no connection) after the grace
period, a code after 10 minutes, a code lockout after 10 minutes; all are cancelled on stop.

A decision that lets someone in is taken only once it is on record: if the audit trail cannot be
written, new requests, codes and sessions are refused (``AUDIT_UNAVAILABLE``) while live sessions
carry on.  Ending things (deny, end, expiry, ``disabled``) always happens, recorded or not.

Sessions live in memory: a restart ends them all (the engineer asks again), while the plant's
access mode is kept in the state directory.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Container, Iterable
from typing import Any, NoReturn, Protocol

import attrs
from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gateway.audit import AuditWriteError, IAuditTrail
from gateway.config import AccessMode, ConsentRules, TargetKind
from gateway.edge.access import (
    ATTENDED_NEEDS_A_SESSION,
    AccessPolicy,
    AccessRequest,
    Grant,
    ISessionLookup,
    Refused,
)
from gateway.edge.consent import (
    GATEWAY,
    Actor,
    CodeGrant,
    ConsentRefused,
    EngineerRefused,
    IConsent,
    IEngineerSessions,
    ISessionChannel,
    PendingRequest,
    Permission,
    Session,
)
from gateway.edge.events import Auditor, ConnectionRecord, IAccessEvents, IStreamEvents
from gateway.edge.state import StateDirectory, StateDirError, StateWriteError
from gateway.edge.status import iso
from gateway.wire import Refusal, SessionAsk, SessionEvent, SessionEventKind

log = Logger()

CODE_DIGITS = 6
CODE_LIFETIME = 600.0
"""A code works for 10 minutes after it was made."""
CODE_FAILURE_LIMIT = 5
CODE_FAILURE_WINDOW = 600.0
CODE_LOCKOUT = 600.0
"""5 wrong codes within 10 minutes lock code entry on this gateway for 10 minutes."""
MAX_PENDING = 50
"""Requests waiting at once: beyond this an engineer is told to try later."""
MAX_LIVE_CODES = 20
MAX_REASON = 500
"""Characters of an engineer's reason or a member of staff's reason that are kept."""
_FORGET_AFTER = 3600.0
"""How long a used or expired code is remembered, to say so instead of "wrong"."""
_DECISIONS_KEPT = 1000

AUDIT_UNAVAILABLE = (
    "the gateway cannot write its audit trail, so it opens no new session until it can; "
    "ask the plant to check the gateway's disk"
)
SWITCHED_OFF = "remote access was switched off"


class StreamCloser(Protocol):
    """What the consent service needs of the forwarder: end the streams it no longer allows."""

    def abort_session(self, session_id: str) -> None: ...

    def narrow_to_view(self, session_id: str, targets: tuple[str, ...] = ()) -> list[str]: ...

    def abort_all(self) -> None: ...


class InvalidTransition(Exception):
    """A move the state machine does not allow: a bug, never a user's mistake."""


class RequestState(enum.Enum):
    WAITING = "waiting"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


class SessionState(enum.Enum):
    LIVE = "live"
    ENDED = "ended"


_REQUEST_MOVES: dict[RequestState, frozenset[RequestState]] = {
    RequestState.WAITING: frozenset(
        {RequestState.APPROVED, RequestState.DENIED, RequestState.EXPIRED, RequestState.WITHDRAWN}
    ),
    RequestState.APPROVED: frozenset(),
    RequestState.DENIED: frozenset(),
    RequestState.EXPIRED: frozenset(),
    RequestState.WITHDRAWN: frozenset(),
}
_SESSION_MOVES: dict[SessionState, frozenset[SessionState]] = {
    SessionState.LIVE: frozenset({SessionState.ENDED}),
    SessionState.ENDED: frozenset(),
}


@define(eq=False)
class _Request:
    info: PendingRequest
    channel: ISessionChannel
    timer: IDelayedCall | None = None
    state: RequestState = RequestState.WAITING

    def move(self, new: RequestState, why: str) -> None:
        if new not in _REQUEST_MOVES[self.state]:
            raise InvalidTransition(f"request {self.info.id}: {self.state.value} -> {new.value}")
        log.info(
            "request {id} by {engineer}: {old} -> {new}: {why}",
            id=self.info.id,
            engineer=self.info.engineer,
            old=self.state.value,
            new=new.value,
            why=why,
        )
        self.state = new
        _cancel(self.timer)
        self.timer = None


@define(eq=False)
class _Live:
    info: Session
    channels: list[ISessionChannel] = field(factory=list)
    connections: dict[str, None] = field(factory=dict)
    """Open connection ids, in the order they opened (a dict as an ordered set)."""
    expiry: IDelayedCall | None = None
    grace: IDelayedCall | None = None
    state: SessionState = SessionState.LIVE

    @property
    def present(self) -> bool:
        """The engineer's client is here: it holds the session stream or a connection."""
        return bool(self.channels or self.connections)

    def snapshot(self) -> Session:
        return attrs.evolve(self.info, connections=tuple(self.connections))

    def move(self, new: SessionState, why: str) -> None:
        if new not in _SESSION_MOVES[self.state]:
            raise InvalidTransition(f"session {self.info.id}: {self.state.value} -> {new.value}")
        log.info(
            "session {id} of {engineer}: {old} -> {new}: {why}",
            id=self.info.id,
            engineer=self.info.engineer,
            old=self.state.value,
            new=new.value,
            why=why,
        )
        self.state = new
        for timer in (self.expiry, self.grace):
            _cancel(timer)
        self.expiry = self.grace = None


@define(eq=False)
class _Code:
    id: str
    digest: bytes
    prefix: str
    """The first digits, for ``approved_by`` once the code is used (never the whole code)."""
    targets: tuple[str, ...]
    permission: Permission
    minutes: int
    expires: float
    created_by: str
    timer: IDelayedCall | None = None


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


def duration(seconds: float) -> str:
    """``120`` -> ``2 minutes``; ``90`` -> ``90 seconds``: how people say a time limit."""
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return "1 minute" if minutes == 1 else f"{minutes} minutes"
    whole = int(seconds) if float(seconds).is_integer() else seconds
    return "1 second" if whole == 1 else f"{whole:g} seconds"


def clean_text(text: str) -> str:
    """One line of printable text, bounded: reasons go into logs, pages and the audit trail."""
    flat = " ".join(text.split())
    return "".join(ch if ch.isprintable() else "?" for ch in flat)[:MAX_REASON]


def starting_mode(state: StateDirectory, configured: AccessMode) -> AccessMode:
    """The mode to start in: the plant's last choice if it made one here, else the config's."""
    saved = state.read_mode()
    return configured if saved is None else saved


@implementer(IConsent, IEngineerSessions, ISessionLookup, IStreamEvents)
class ConsentService(Service):
    """Modes, requests, codes and sessions of one gateway (see the module docstring)."""

    name = "consent"

    def __init__(
        self,
        *,
        policy: AccessPolicy,
        state: StateDirectory,
        audit: IAuditTrail,
        clock: IReactorTime,
        events: IAccessEvents,
        rules: ConsentRules | None = None,
        streams: StreamCloser | None = None,
    ) -> None:
        self._policy = policy
        self._state = state
        self._clock = clock
        self._events = events
        self.auditor = Auditor(audit, events)
        """Shared with the stream records (`StreamAudit`), so an outage is told once."""
        self.rules = rules if rules is not None else ConsentRules()
        self.streams = streams
        """The forwarder (set by the composition root if it is made later)."""
        self._requests: dict[str, _Request] = {}
        self._sessions: dict[str, _Live] = {}
        self._implicit: dict[str, str] = {}
        """engineer -> their implicit session (unattended mode)."""
        self._channels: dict[ISessionChannel, _Request | _Live] = {}
        self._decided: OrderedDict[str, str] = OrderedDict()
        """request id -> what became of it ("approved by alice"), for a late second answer."""
        self._codes: dict[bytes, _Code] = {}
        self._spent: dict[bytes, tuple[str, float]] = {}
        """digest -> ("used" | "expired", when), for a code entered again."""
        self._code_key = secrets.token_bytes(32)
        """Codes are kept as HMACs under a key that never leaves this process: a 6-digit code's
        plain hash could be reversed by trying all million."""
        self._failures: list[float] = []
        self._locked_until: float | None = None
        self._unlock: IDelayedCall | None = None
        self._waiters: list[Deferred[None]] = []
        self._stopped = False

    # -- IService --------------------------------------------------------------------------------

    def stopService(self) -> Deferred[None] | None:
        """Cancel every timer; tell waiting and live engineers that the gateway is going away.

        Their connections are left to the tunnel's drain (``drain_timeout``), and nothing here is
        kept: a restarted gateway has no sessions.
        """
        self._stopped = True
        why = "the gateway is shutting down"
        for request in list(self._requests.values()):
            self._close_request(request, RequestState.WITHDRAWN, GATEWAY, why)
        for live in list(self._sessions.values()):
            self._finish(live, GATEWAY, why, abort_streams=False)
        for code in self._codes.values():
            _cancel(code.timer)
        self._codes.clear()
        _cancel(self._unlock)
        self._unlock = None
        self._changed()
        Service.stopService(self)
        return None

    # -- IConsent: modes -------------------------------------------------------------------------

    def mode(self) -> AccessMode:
        return self._policy.mode

    def set_mode(self, mode: AccessMode, by: Actor) -> AccessMode:
        new = AccessMode(mode)
        old = self._policy.mode
        if new is old:
            return old
        now = self._clock.seconds()
        if new is AccessMode.DISABLED:
            # Switching off must never be refused: save and record it if possible, do it anyway.
            try:
                self._state.write_mode(new, by=str(by), at=now)
            except StateWriteError as e:
                log.error("access mode disabled but not saved ({why}): a restart reverts it", why=e)
            self.auditor.record("mode.changed", who=str(by), old=old.value, new=new.value)
        else:
            try:
                saved = self._state.read_mode()
            except StateDirError:
                saved = None  # unreadable: replaced by the new choice in any case
            try:
                self._state.write_mode(new, by=str(by), at=now)
            except StateWriteError as e:
                raise ConsentRefused(
                    "state-unavailable", f"the mode could not be saved: {e}"
                ) from None
            try:
                self.auditor.require("mode.changed", who=str(by), old=old.value, new=new.value)
            except AuditWriteError:
                try:  # leave the saved mode as it was
                    if saved is None:
                        self._state.forget_mode()
                    else:
                        self._state.write_mode(saved, by=str(by), at=now)
                except StateWriteError as e:
                    log.error("access mode file could not be put back ({why})", why=e)
                raise ConsentRefused("audit-unavailable", AUDIT_UNAVAILABLE) from None
        self._switch(old, new, by)
        return old

    def apply_configured_mode(self, mode: AccessMode) -> AccessMode:
        """A reloaded gateway.toml's ``[access] mode``, while the plant has chosen none: applied
        as a switch by the plant would be (streams, sessions and requests it no longer allows
        end), audited, but not saved (the file says it).  Returns the old mode."""
        old = self._policy.mode
        if mode is old:
            return old
        by = Actor("gateway", "config reload")
        self.auditor.record("mode.changed", who=str(by), old=old.value, new=mode.value)
        self._switch(old, mode, by)
        return old

    def _switch(self, old: AccessMode, new: AccessMode, by: Actor) -> None:
        """Switch the policy to ``new`` and end what it no longer allows."""
        log.info("access mode {old} -> {new} by {who}", old=old.value, new=new.value, who=str(by))
        self._policy.set_mode(new)
        if new is AccessMode.DISABLED:
            for request in list(self._requests.values()):
                self._close_request(request, RequestState.DENIED, GATEWAY, SWITCHED_OFF)
            for live in list(self._sessions.values()):
                self._finish(live, by, SWITCHED_OFF)
            if self.streams is not None:
                self.streams.abort_all()
        elif old is AccessMode.UNATTENDED:
            why = (
                "the plant switched to attended mode: ask for a session with "
                "`gateway connect --reason ...`"
            )
            for live in list(self._sessions.values()):
                if live.info.implicit:
                    self._finish(live, by, why)
        self._changed()

    # -- IConsent: requests ----------------------------------------------------------------------

    def requests(self) -> list[PendingRequest]:
        return sorted((r.info for r in self._requests.values()), key=lambda r: (r.asked, r.id))

    def approve(
        self,
        request_id: str,
        by: Actor,
        minutes: int | None = None,
        targets: tuple[str, ...] | None = None,
        permission: Permission = Permission.FULL,
    ) -> Session:
        request = self._waiting(request_id)
        length = self._minutes(minutes)
        granted = self._targets(targets, request.info.targets)
        permission = self._permission(permission)
        if self._policy.mode is AccessMode.DISABLED:
            raise ConsentRefused("access-disabled", "remote access is switched off on this gateway")
        now = self._clock.seconds()
        info = Session(
            id=self._new_id("s-", self._sessions),
            engineer=request.info.engineer,
            reason=request.info.reason,
            targets=granted,
            permission=permission,
            started=now,
            expires=now + length * 60,
            approved_by=str(by),
        )
        try:
            self.auditor.require(
                "session.approved",
                who=str(by),
                request=request.info.id,
                session=info.id,
                engineer=info.engineer,
                targets=list(granted),
                permission=permission.value,
                minutes=length,
                expires=iso(now + length * 60),
            )
        except AuditWriteError:
            raise ConsentRefused("audit-unavailable", AUDIT_UNAVAILABLE) from None
        request.move(RequestState.APPROVED, f"approved by {by} for {duration(length * 60)}")
        self._forget_request(request, f"approved by {by}")
        self._channels.pop(request.channel, None)
        live = self._start(info, [request.channel], "approved")
        self._events.request_closed(request.info, "approved")
        self._changed()
        return live.snapshot()

    def deny(self, request_id: str, by: Actor, reason: str = "") -> None:
        request = self._waiting(request_id)
        text = clean_text(reason)
        told = f"denied by {by.name}: {text}" if text else f"denied by {by.name}"
        self._close_request(request, RequestState.DENIED, by, told, staff_reason=text)
        self._changed()

    # -- IConsent: codes -------------------------------------------------------------------------

    def create_code(
        self,
        by: Actor,
        minutes: int | None = None,
        targets: tuple[str, ...] | None = None,
        permission: Permission = Permission.FULL,
    ) -> CodeGrant:
        length = self._minutes(minutes)
        granted = self._targets(targets, tuple(self._policy.target_names))
        permission = self._permission(permission)
        if self._policy.mode is AccessMode.DISABLED:
            raise ConsentRefused(
                "access-disabled",
                "remote access is switched off on this gateway: a code would not let anyone in",
            )
        if len(self._codes) >= MAX_LIVE_CODES:
            raise ConsentRefused(
                "limit-reached",
                f"{MAX_LIVE_CODES} codes are unused already; wait until they expire",
            )
        while True:
            code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
            digest = self._digest(code)
            if digest not in self._codes and digest not in self._spent:
                break
        now = self._clock.seconds()
        grant = _Code(
            id=self._new_id("c-", {c.id for c in self._codes.values()}),
            digest=digest,
            prefix=code[:3],
            targets=granted,
            permission=permission,
            minutes=length,
            expires=now + CODE_LIFETIME,
            created_by=str(by),
        )
        try:
            self.auditor.require(
                "code.created",
                who=str(by),
                code=grant.id,
                targets=list(granted),
                permission=permission.value,
                minutes=length,
                expires=iso(grant.expires),
            )
        except AuditWriteError:
            raise ConsentRefused("audit-unavailable", AUDIT_UNAVAILABLE) from None
        grant.timer = self._clock.callLater(CODE_LIFETIME, self._code_expired, grant)
        self._codes[digest] = grant
        self._events.code_created(grant.id)
        log.info(
            "code {id} made by {who}: {minutes} min on {targets}, valid until {until}",
            id=grant.id,
            who=str(by),
            minutes=length,
            targets=", ".join(granted),
            until=iso(grant.expires),
        )
        return CodeGrant(
            code=code,
            targets=granted,
            permission=permission,
            minutes=length,
            expires=grant.expires,
            id=grant.id,
        )

    def code_entry_locked_until(self) -> float | None:
        until = self._locked_until
        if until is None or self._clock.seconds() >= until:
            return None
        return until

    # -- IConsent: sessions ----------------------------------------------------------------------

    def sessions(self) -> list[Session]:
        live = sorted(self._sessions.values(), key=lambda s: (s.info.started, s.info.id))
        return [s.snapshot() for s in live]

    def end(self, session_id: str, by: Actor, reason: str = "") -> Session:
        live = self._sessions.get(session_id)
        if live is None:
            raise ConsentRefused(
                "unknown-session",
                f"no live session {session_id!r} on this gateway (see `gateway sessions`)",
            )
        text = clean_text(reason)
        snapshot = live.snapshot()
        self._finish(live, by, f"ended by the plant: {text}" if text else "ended by the plant")
        self._changed()
        return snapshot

    def allowlist_changed(self) -> None:
        """The allowlist was reloaded: the implicit sessions of ``unattended`` mode cover the
        whole allowlist, so they follow it (new targets in, removed ones out).  Sessions the
        plant approved keep the targets it approved; the policy refuses those that left."""
        names = tuple(self._policy.target_names)
        for session_id in self._implicit.values():
            live = self._sessions.get(session_id)
            if live is not None and live.info.targets != names:
                live.info = attrs.evolve(live.info, targets=names)
        self._changed()

    def end_all(self, by: Actor, reason: str = "") -> list[Session]:
        text = clean_text(reason)
        why = f"ended by the plant: {text}" if text else "ended by the plant"
        ended = self.sessions()
        for live in list(self._sessions.values()):
            self._finish(live, by, why)
        if ended:
            self._changed()
        return ended

    def set_permission(
        self,
        session_id: str,
        permission: Permission,
        by: Actor,
        targets: tuple[str, ...] = (),
    ) -> Session:
        """Switch a live session (on ``targets`` only, if given) between view and full."""
        live = self._sessions.get(session_id)
        if live is None:
            raise ConsentRefused(
                "unknown-session",
                f"no live session {session_id!r} on this gateway (see `gateway sessions`)",
            )
        permission = self._permission(permission)
        info = live.info
        outside = [t for t in targets if t not in info.targets]
        if outside:
            raise ConsentRefused(
                "target-not-covered",
                f"session {session_id} does not cover {', '.join(map(repr, outside))} (it "
                f"covers: {', '.join(info.targets)})",
            )
        targets = tuple(dict.fromkeys(targets))  # once each, in the order given
        before = {t: info.permission_on(t) for t in info.targets}
        if targets and set(targets) != set(info.targets):
            overrides = {t: p for t, p in info.per_target if t not in targets}
            overrides.update({t: permission for t in targets if permission is not info.permission})
            new_info = attrs.evolve(info, per_target=tuple(sorted(overrides.items())))
        else:
            new_info = attrs.evolve(info, permission=permission, per_target=())
        after = {t: new_info.permission_on(t) for t in info.targets}
        changed = tuple(t for t in info.targets if before[t] is not after[t])
        if not changed:
            return live.snapshot()
        olds = {before[t] for t in changed}
        previous = olds.pop() if len(olds) == 1 else None
        details: dict[str, Any] = {
            "session": session_id,
            "engineer": info.engineer,
            "previous": "mixed" if previous is None else previous.value,
            "permission": permission.value,
            "targets": list(changed),
        }
        if permission is Permission.FULL:
            # More rights are a decision that lets someone in: only once it is on record.
            try:
                self.auditor.require("session.changed", who=str(by), **details)
            except AuditWriteError:
                raise ConsentRefused("audit-unavailable", AUDIT_UNAVAILABLE) from None
        else:
            self.auditor.record("session.changed", who=str(by), **details)  # narrowing: always
        live.info = new_info
        log.info(
            "session {id} of {engineer}: {old} -> {new} permission on {targets}, by {by}",
            id=session_id,
            engineer=info.engineer,
            old=details["previous"],
            new=permission.value,
            targets=", ".join(changed),
            by=str(by),
        )
        if permission is Permission.VIEW and self.streams is not None:
            whole = set(changed) == set(info.targets)
            self.streams.narrow_to_view(session_id, () if whole else changed)
        for channel in live.channels:  # the engineer hears it from the plant, not from a 403
            channel.send(
                SessionEvent(
                    SessionEventKind.CHANGED,
                    session=session_id,
                    targets=list(changed),
                    permission=permission.value,
                    approved_by=str(by),
                )
            )
        self._changed()
        return live.snapshot()

    def when_changed(self) -> Deferred[None]:
        def cancel(d: Deferred[None]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        d: Deferred[None] = Deferred(cancel)
        self._waiters.append(d)
        return d

    # -- IEngineerSessions -----------------------------------------------------------------------

    def ask(self, engineer: str, ask: SessionAsk, channel: ISessionChannel) -> None:
        if self._stopped:
            raise EngineerRefused(Refusal.SHUTTING_DOWN, "the gateway is shutting down")
        mode = self._policy.mode
        if mode is AccessMode.DISABLED:
            raise EngineerRefused(
                Refusal.ACCESS_DISABLED, "remote access is switched off on this gateway"
            )
        if sum(x is not None for x in (ask.reason, ask.code, ask.resume)) > 1:
            raise EngineerRefused(
                Refusal.BAD_REQUEST, "ask with a reason, a code or a session to resume: only one"
            )
        if ask.resume is not None:
            self._resume(engineer, ask.resume, channel)
            return
        wanted = self._asked_targets(ask.targets)
        if ask.code is not None:
            self._use_code(engineer, ask.code, wanted, channel)
        elif ask.reason is not None:
            reason = clean_text(ask.reason)
            if not reason:
                raise EngineerRefused(
                    Refusal.BAD_REQUEST,
                    "a request needs a reason the plant can judge (ticket, what you will do)",
                )
            if mode is AccessMode.UNATTENDED:
                self._join_implicit(engineer, reason, channel)
            else:
                self._open_request(engineer, reason, wanted, channel)
        elif mode is AccessMode.UNATTENDED:
            self._join_implicit(engineer, "", channel)
        else:
            raise EngineerRefused(Refusal.SESSION_REQUIRED, ATTENDED_NEEDS_A_SESSION)

    def channel_lost(self, channel: ISessionChannel) -> None:
        owner = self._channels.pop(channel, None)
        if isinstance(owner, _Request):
            if owner.state is RequestState.WAITING:
                self._close_request(
                    owner,
                    RequestState.WITHDRAWN,
                    Actor("engineer", owner.info.engineer),
                    "the engineer stopped waiting",
                    tell=False,
                )
                self._changed()
        elif isinstance(owner, _Live):
            if channel in owner.channels:
                owner.channels.remove(channel)
            self._presence(owner)

    # -- ISessionLookup --------------------------------------------------------------------------

    def grant(self, session_id: str) -> Grant | None:
        live = self._sessions.get(session_id)
        if live is None:
            return None
        return _grant(live.info)

    def implicit_session(self, engineer: str) -> Grant | Refused:
        if self._stopped:
            return Refused(Refusal.SHUTTING_DOWN, "the gateway is shutting down")
        try:
            live = self._implicit_for(engineer, "")
        except EngineerRefused as e:
            return Refused(e.refusal, e.reason)
        return _grant(live.info)

    # -- IStreamEvents: which connections each session has ------------------------------------

    def stream_opened(self, connection: ConnectionRecord) -> None:
        live = self._sessions.get(connection.session or "")
        if live is not None:
            live.connections[connection.id] = None
            self._presence(live)
            self._changed()

    def stream_closed(
        self, connection: ConnectionRecord, bytes_to_target: int, bytes_from_target: int, why: str
    ) -> None:
        live = self._sessions.get(connection.session or "")
        if live is not None and connection.id in live.connections:
            del live.connections[connection.id]
            self._presence(live)
            self._changed()

    def stream_refused(self, request: AccessRequest, refusal: Refusal, reason: str) -> None:
        pass

    # -- requests --------------------------------------------------------------------------------

    def _open_request(
        self, engineer: str, reason: str, targets: tuple[str, ...], channel: ISessionChannel
    ) -> None:
        earlier = [r for r in self._requests.values() if r.info.engineer == engineer]
        if len(self._requests) - len(earlier) >= MAX_PENDING:
            raise EngineerRefused(
                Refusal.LIMIT_REACHED,
                f"{MAX_PENDING} requests are waiting at this gateway already; try again later",
            )
        now = self._clock.seconds()
        info = PendingRequest(
            id=self._new_id("r-", self._requests.keys() | self._decided.keys()),
            engineer=engineer,
            reason=reason,
            targets=targets or tuple(self._policy.target_names),
            asked=now,
            expires=now + self.rules.request_timeout,
        )
        try:
            self.auditor.require(
                "session.requested",
                who=engineer,
                request=info.id,
                reason=reason,
                targets=list(info.targets),
                expires=iso(info.expires),
            )
        except AuditWriteError:
            raise EngineerRefused(Refusal.AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE) from None
        for old in earlier:  # one question per engineer: the newest stands
            self._close_request(
                old,
                RequestState.WITHDRAWN,
                Actor("engineer", engineer),
                f"replaced by your newer request {info.id}",
            )
        request = _Request(info, channel)
        request.timer = self._clock.callLater(
            self.rules.request_timeout, self._request_expired, request
        )
        self._requests[info.id] = request
        self._channels[channel] = request
        log.info(
            "request {id} by {engineer} for {targets}: {reason}",
            id=info.id,
            engineer=engineer,
            targets=", ".join(info.targets),
            reason=reason,
        )
        channel.send(
            SessionEvent(
                SessionEventKind.WAITING,
                request=info.id,
                targets=list(info.targets),
                asked=iso(info.asked),
                expires=iso(info.expires),
            )
        )
        self._events.request_opened(info)
        self._changed()

    def _request_expired(self, request: _Request) -> None:
        request.timer = None
        if request.state is not RequestState.WAITING:
            return
        why = f"nobody at the plant answered within {duration(self.rules.request_timeout)}"
        self._close_request(request, RequestState.EXPIRED, GATEWAY, why)
        self._changed()

    def _close_request(
        self,
        request: _Request,
        state: RequestState,
        by: Actor,
        why: str,
        *,
        staff_reason: str | None = None,
        tell: bool = True,
    ) -> None:
        """Deny, expire or withdraw: recorded if possible, done in any case."""
        request.move(state, why)
        self._forget_request(
            request, f"{state.value}: {why}" if by.kind == "gateway" else f"{state.value} by {by}"
        )
        self.auditor.record(
            "session.denied",
            who=str(by),
            result=state.value,
            request=request.info.id,
            engineer=request.info.engineer,
            reason=staff_reason if staff_reason is not None else why,
        )
        if tell:
            self._tell_denied(request, why)
        self._events.request_closed(request.info, state.value)

    def _tell_denied(self, request: _Request, why: str) -> None:
        self._channels.pop(request.channel, None)
        request.channel.send(
            SessionEvent(SessionEventKind.DENIED, request=request.info.id, reason=why)
        )
        request.channel.close()

    def _forget_request(self, request: _Request, outcome: str) -> None:
        self._requests.pop(request.info.id, None)
        self._decided[request.info.id] = outcome
        while len(self._decided) > _DECISIONS_KEPT:
            self._decided.popitem(last=False)

    def _waiting(self, request_id: str) -> _Request:
        request = self._requests.get(request_id)
        if request is not None:
            return request
        outcome = self._decided.get(request_id)
        if outcome is not None:
            raise ConsentRefused("already-decided", f"request {request_id} was already {outcome}")
        raise ConsentRefused(
            "unknown-request",
            f"no request {request_id!r} on this gateway (see `gateway requests`)",
        )

    # -- codes -----------------------------------------------------------------------------------

    def _digest(self, code: str) -> bytes:
        return hmac.new(self._code_key, code.encode("ascii"), hashlib.sha256).digest()

    def _code_expired(self, code: _Code) -> None:
        code.timer = None
        if self._codes.get(code.digest) is code:
            del self._codes[code.digest]
            self._spent[code.digest] = ("expired", self._clock.seconds())
            log.info("code {id} expired unused", id=code.id)

    def _use_code(
        self, engineer: str, text: str, wanted: tuple[str, ...], channel: ISessionChannel
    ) -> None:
        now = self._clock.seconds()
        who = Actor("engineer", engineer)
        locked = self.code_entry_locked_until()
        if locked is not None:
            self.auditor.record("code.failed", who=str(who), result="locked")
            self._events.code_refused("locked")
            raise EngineerRefused(
                Refusal.TOO_MANY_ATTEMPTS,
                f"code entry on this gateway is locked after {CODE_FAILURE_LIMIT} wrong codes, "
                f"until {iso(locked)}; ask the plant to approve a request instead, or wait",
            )
        digits = "".join(text.split()).replace("-", "")
        if len(digits) != CODE_DIGITS or not digits.isascii() or not digits.isdigit():
            raise EngineerRefused(
                Refusal.CODE_INVALID, f"a session code is {CODE_DIGITS} digits, like 123456"
            )
        digest = self._digest(digits)
        code = self._codes.get(digest)
        if code is None:
            self._refuse_code(who, digest, now)
        if wanted and not set(wanted) <= set(code.targets):
            raise EngineerRefused(
                Refusal.TARGET_NOT_ALLOWED,
                f"this code covers only {', '.join(code.targets)}",
            )
        info = Session(
            id=self._new_id("s-", self._sessions),
            engineer=engineer,
            reason="session code",
            targets=wanted or code.targets,
            permission=code.permission,
            started=now,
            expires=now + code.minutes * 60,
            approved_by=f"code {code.prefix}... from {code.created_by}",
        )
        try:
            self.auditor.require("code.used", who=str(who), code=code.id, session=info.id)
        except AuditWriteError:
            raise EngineerRefused(Refusal.AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE) from None
        _cancel(code.timer)
        del self._codes[digest]
        self._spent[digest] = ("used", now)
        self._start(info, [channel], "code")
        self._changed()

    def _refuse_code(self, who: Actor, digest: bytes, now: float) -> NoReturn:
        """Refuse a code that opens nothing; count it towards the lockout if it never did."""
        self._spent = {d: s for d, s in self._spent.items() if now - s[1] < _FORGET_AFTER}
        spent = self._spent.get(digest)
        if spent is not None:
            what = spent[0]
            self.auditor.record("code.failed", who=str(who), result=what)
            self._events.code_refused(what)
            if what == "used":
                reason = "this code was used already: a code lets one engineer in, once"
            else:
                reason = (
                    f"this code has expired (codes work for {duration(CODE_LIFETIME)}); "
                    "ask the plant for a new one"
                )
            raise EngineerRefused(Refusal.CODE_INVALID, reason)
        self._failures = [t for t in self._failures if now - t < CODE_FAILURE_WINDOW]
        self._failures.append(now)
        count = len(self._failures)
        self.auditor.record("code.failed", who=str(who), result="wrong", failures=count)
        self._events.code_refused("wrong")
        reason = "this code is not valid on this gateway; check the digits with the plant"
        if count >= CODE_FAILURE_LIMIT:
            self._lock(now, count)
            reason += (
                f"; after {count} wrong codes code entry is locked until {iso(now + CODE_LOCKOUT)}"
            )
        raise EngineerRefused(Refusal.CODE_INVALID, reason)

    def _lock(self, now: float, count: int) -> None:
        self._locked_until = now + CODE_LOCKOUT
        self._failures = []
        log.warn(
            "code entry locked until {until} after {count} wrong codes",
            until=iso(self._locked_until),
            count=count,
        )
        self.auditor.record(
            "code.locked", who=str(GATEWAY), until=iso(self._locked_until), failures=count
        )
        _cancel(self._unlock)
        self._unlock = self._clock.callLater(CODE_LOCKOUT, self._unlocked)
        self._changed()

    def _unlocked(self) -> None:
        self._unlock = None
        self._locked_until = None
        log.info("code entry open again")
        self._changed()

    # -- sessions --------------------------------------------------------------------------------

    def _start(
        self,
        info: Session,
        channels: Iterable[ISessionChannel],
        how: str,
        *,
        must_record: bool = False,
    ) -> _Live:
        """Make ``info`` live.  ``must_record``: its ``session.started`` record is the decision
        itself (an implicit session), so a write that fails refuses it (AuditWriteError)."""
        details: dict[str, Any] = {
            "session": info.id,
            "engineer": info.engineer,
            "targets": list(info.targets),
            "permission": info.permission.value,
            "expires": None if info.expires is None else iso(info.expires),
            "approved_by": info.approved_by,
            "implicit": info.implicit,
        }
        if must_record:
            self.auditor.require("session.started", who=info.engineer, **details)
        else:
            self.auditor.record("session.started", who=info.engineer, **details)
        live = _Live(info)
        self._sessions[info.id] = live
        if info.implicit:
            self._implicit[info.engineer] = info.id
        if info.expires is not None:
            live.expiry = self._clock.callLater(
                max(0.0, info.expires - self._clock.seconds()), self._expired, live
            )
        log.info(
            "session {id}: {engineer} on {targets} ({permission}) until {until}, by {by}",
            id=info.id,
            engineer=info.engineer,
            targets=", ".join(info.targets),
            permission=info.permission.value,
            until="it is ended" if info.expires is None else iso(info.expires),
            by=info.approved_by,
        )
        for channel in channels:
            self._attach(live, channel)
        self._events.session_started(info, how)
        self._presence(live)
        return live

    def _attach(self, live: _Live, channel: ISessionChannel) -> None:
        live.channels.append(channel)
        self._channels[channel] = live
        info = live.info
        channel.send(
            SessionEvent(
                SessionEventKind.APPROVED,
                session=info.id,
                targets=list(info.targets),
                permission=info.permission.value,
                expires=None if info.expires is None else iso(info.expires),
                approved_by=info.approved_by,
                http_targets=self._http_targets(info.targets),
            )
        )

    def _http_targets(self, names: Iterable[str]) -> list[str]:
        """Which of ``names`` speak HTTP (``kind = "http"``)."""
        kinds = ((name, self._policy.target(name)) for name in names)
        return [name for name, t in kinds if t is not None and t.kind is TargetKind.HTTP]

    def _resume(self, engineer: str, session_id: str, channel: ISessionChannel) -> None:
        live = self._sessions.get(session_id)
        if live is None or live.info.engineer != engineer:
            raise EngineerRefused(
                Refusal.SESSION_ENDED,
                f"session {session_id} is not live on this gateway (it ended, expired, or is "
                "not yours); ask the plant for a new one",
            )
        log.info("session {id}: {engineer} is back", id=session_id, engineer=engineer)
        self._attach(live, channel)
        self._presence(live)

    def _join_implicit(self, engineer: str, reason: str, channel: ISessionChannel) -> None:
        live = self._implicit_for(engineer, reason)
        if channel not in live.channels:
            self._attach(live, channel)
        self._presence(live)
        self._changed()

    def _implicit_for(self, engineer: str, reason: str) -> _Live:
        """The engineer's implicit session (``unattended`` mode), started if they had none."""
        existing = self._sessions.get(self._implicit.get(engineer, ""))
        if existing is not None:
            return existing
        if self._policy.mode is not AccessMode.UNATTENDED:
            raise EngineerRefused(Refusal.SESSION_REQUIRED, ATTENDED_NEEDS_A_SESSION)
        info = Session(
            id=self._new_id("s-", self._sessions),
            engineer=engineer,
            reason=reason,
            targets=tuple(self._policy.target_names),
            permission=Permission.FULL,
            started=self._clock.seconds(),
            expires=None,
            approved_by="unattended mode",
            implicit=True,
        )
        try:
            live = self._start(info, [], "unattended", must_record=True)
        except AuditWriteError:
            raise EngineerRefused(Refusal.AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE) from None
        self._changed()
        return live

    def _expired(self, live: _Live) -> None:
        live.expiry = None
        if live.state is SessionState.LIVE:
            self._finish(live, GATEWAY, "expired")
            self._changed()

    def _presence(self, live: _Live) -> None:
        """Start or stop the grace period as the engineer's client comes and goes."""
        if live.state is not SessionState.LIVE:
            return
        if live.present:
            _cancel(live.grace)
            live.grace = None
        elif live.grace is None:
            live.grace = self._clock.callLater(self.rules.grace_seconds, self._gone, live)

    def _gone(self, live: _Live) -> None:
        live.grace = None
        if live.state is SessionState.LIVE and not live.present:
            why = f"the engineer's client was gone for {duration(self.rules.grace_seconds)}"
            self._finish(live, GATEWAY, why)
            self._changed()

    def _finish(self, live: _Live, by: Actor, why: str, *, abort_streams: bool = True) -> None:
        """End a session: tell the engineer why, close its streams, record it."""
        info = live.info
        snapshot = live.snapshot()
        live.move(SessionState.ENDED, why)
        self._sessions.pop(info.id, None)
        if self._implicit.get(info.engineer) == info.id:
            del self._implicit[info.engineer]
        for channel in live.channels:
            self._channels.pop(channel, None)
            channel.send(SessionEvent(SessionEventKind.ENDED, session=info.id, why=why))
            channel.close()
        live.channels = []
        if abort_streams and self.streams is not None:
            self.streams.abort_session(info.id)
        self.auditor.record(
            "session.ended",
            who=str(by),
            session=info.id,
            engineer=info.engineer,
            why=why,
            seconds=round(self._clock.seconds() - info.started, 3),
            connections=list(snapshot.connections),
        )
        self._events.session_ended(snapshot, why)

    # -- checks shared by the plant's actions ---------------------------------------------------

    def _minutes(self, minutes: int | None) -> int:
        if minutes is None:
            return self.rules.session_minutes
        longest = self.rules.max_session_minutes
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= longest:
            raise ConsentRefused(
                "bad-minutes", f"a session lasts 1 to {longest} minutes, not {minutes}"
            )
        return minutes

    def _targets(self, targets: Iterable[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
        if targets is None:
            return default
        allowed = self._policy.target_names
        chosen = list(dict.fromkeys(targets))
        if not chosen:
            raise ConsentRefused("no-targets", "a session needs at least one target")
        for name in chosen:
            if name not in allowed:
                raise ConsentRefused(
                    "target-not-allowed",
                    f"target {name!r} is not in this gateway's allowlist "
                    f"({', '.join(allowed) or 'it is empty'})",
                )
        return tuple(sorted(chosen))

    def _asked_targets(self, targets: list[str]) -> tuple[str, ...]:
        allowed = self._policy.target_names
        for name in targets:
            if name not in allowed:
                raise EngineerRefused(
                    Refusal.TARGET_NOT_ALLOWED,
                    f"target {clean_text(str(name))[:64]!r} is not in this gateway's allowlist",
                )
        return tuple(sorted(set(targets)))

    @staticmethod
    def _permission(permission: Permission | str) -> Permission:
        try:
            return Permission(permission)
        except ValueError:
            choices = ", ".join(p.value for p in Permission)
            raise ConsentRefused(
                "bad-permission", f"permission is one of {choices}, not {permission!r}"
            ) from None

    @staticmethod
    def _new_id(prefix: str, taken: Container[str]) -> str:
        while (candidate := prefix + secrets.token_hex(3)) in taken:
            pass
        return candidate

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


def _grant(info: Session) -> Grant:
    return Grant(info.id, info.engineer, frozenset(info.targets), info.permission, info.per_target)
