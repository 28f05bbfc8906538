"""Failed engineer logins, limited: per source address and per engineer (IEC 62443 SR 1.11).

Tokens are 256 random bits, so guessing one is hopeless; the limit is about what guessing costs
the relay and what it says: a source that keeps failing is refused for a while (with the time it
lifts), even with a good token, and every failure is logged with the peer's address (never the
token), counted in ``relay_auth_failures_total{kind=...}`` and audited.

What counts:

* per source address (IPv6: its /64): bad tokens and expired tokens;
* per engineer: refusals that name one, an expired token or a gateway they are not authorised
  for (only the token's holder can cause those, so nobody can lock another engineer out).

A refusal because the relay's own engineer list is unusable counts against no one.  Memory is
bounded: at most ``max_tracked`` sources and engineers each are remembered, the least recently
failed forgotten first, so a flood from many addresses cannot grow the tables.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from datetime import UTC, datetime

from prometheus_client import Counter
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gateway.audit import AuditWriteError, IAuditTrail
from gateway.config import LoginLimits
from gateway.logsafe import peer_text
from gateway.relay.credentials import CredentialsUnavailable, Engineer
from gateway.relay.metrics import RelayMetrics
from gateway.relay.refusals import Refused
from gateway.wire import Refusal

log = Logger()

MAX_TRACKED = 10_000
"""Sources (and, apart, engineers) remembered at most: about 1 KiB each at the default limit."""

_PER_SOURCE = frozenset({Refusal.BAD_TOKEN, Refusal.TOKEN_EXPIRED})
_PER_ENGINEER = frozenset({Refusal.TOKEN_EXPIRED, Refusal.NOT_AUTHORISED})
_KINDS = {
    Refusal.TOKEN_EXPIRED: "token_expired",
    Refusal.NOT_AUTHORISED: "not_authorised",
}
"""``relay_auth_failures_total`` kinds counted here; bad tokens are the path's own
``engineer_token`` count."""


class ILoginAttempts(Interface):
    """The engineer path's login limits: asked before and told after each login."""

    def check(peer: str, engineer: Engineer | None) -> None:
        """Raise `Refused` (``TOO_MANY_ATTEMPTS``) while ``peer`` (or ``engineer``, once
        known) is locked out."""

    def failed(refused: Refused, peer: str, gateway_id: str, engineer: Engineer | None) -> None:
        """A login from ``peer`` was refused (``engineer`` if the token named one)."""


@implementer(ILoginAttempts)
class NoLoginLimits:
    """No limits (tests of other steps)."""

    def check(self, peer: str, engineer: Engineer | None) -> None:
        return None

    def failed(
        self, refused: Refused, peer: str, gateway_id: str, engineer: Engineer | None
    ) -> None:
        return None


class _Tally:
    __slots__ = ("failures", "locked_until")

    def __init__(self, limit: int) -> None:
        self.failures: deque[float] = deque(maxlen=limit)
        self.locked_until = 0.0


class FailureCounter:
    """Failures per key within a sliding window; a lockout after ``limits.failures`` of them.

    An LRU: each failure moves its key to the end; keys whose window and lockout are over are
    dropped from the front, and past ``max_keys`` the least recently failed key goes.  Failures
    while a key is locked are not counted: the lockout lasts from the failure that caused it.
    """

    def __init__(self, limits: LoginLimits, clock: IReactorTime, max_keys: int = MAX_TRACKED):
        self.limits = limits
        self.clock = clock
        self.max_keys = max_keys
        self._tallies: OrderedDict[str, _Tally] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tallies)

    def locked_until(self, key: str) -> float | None:
        """When the lockout of ``key`` lifts, or None if it is not locked out."""
        tally = self._tallies.get(key)
        if tally is None or tally.locked_until <= self.clock.seconds():
            return None
        return tally.locked_until

    def failed(self, key: str) -> float | None:
        """Count a failure; returns when the lockout lifts if this failure started one."""
        now = self.clock.seconds()
        self._forget_stale(now)
        tally = self._tallies.pop(key, None) or _Tally(self.limits.failures)
        self._tallies[key] = tally
        while len(self._tallies) > self.max_keys:
            self._tallies.popitem(last=False)
        if tally.locked_until > now:
            return None
        failures = tally.failures
        failures.append(now)
        while failures and failures[0] <= now - self.limits.window:
            failures.popleft()
        if len(failures) < self.limits.failures:
            return None
        failures.clear()
        tally.locked_until = now + self.limits.lockout
        return tally.locked_until

    def _forget_stale(self, now: float) -> None:
        window = self.limits.window
        while self._tallies:
            tally = next(iter(self._tallies.values()))
            last = tally.failures[-1] if tally.failures else 0.0
            if tally.locked_until > now or last > now - window:
                return
            self._tallies.popitem(last=False)


def source_key(peer: str) -> str:
    """What a source is: an IPv4 address, or an IPv6 address's /64 (one site's prefix)."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _lifts(until: float, now: float) -> str:
    left = max(1, round(until - now))
    minutes, seconds = divmod(left, 60)
    wait = f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    moment = datetime.fromtimestamp(until, UTC).strftime("%H:%M:%S")
    return f"until {moment} UTC (in {wait})"


@implementer(ILoginAttempts)
class LoginGuard:
    """The relay's login limits, with their log lines, metrics and audit records."""

    def __init__(
        self,
        limits: LoginLimits,
        clock: IReactorTime,
        metrics: RelayMetrics,
        audit: IAuditTrail | None = None,
        *,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.audit = audit
        self.sources = FailureCounter(limits, clock, max_tracked)
        self.engineers = FailureCounter(limits, clock, max_tracked)
        failures = metrics.auth_failures
        self._kinds = {refusal: failures.labels(kind=kind) for refusal, kind in _KINDS.items()}
        self._too_many = failures.labels(kind="too_many_attempts")
        lockouts = Counter(
            "relay_login_lockouts_total",
            "Sources and engineers locked out after too many failed logins",
            ["scope"],
            registry=metrics.registry,
        )
        self._lockouts = {scope: lockouts.labels(scope=scope) for scope in ("source", "engineer")}

    def check(self, peer: str, engineer: Engineer | None) -> None:
        now = self.clock.seconds()
        if engineer is None:
            until = self.sources.locked_until(source_key(peer))
            if until is not None:
                self._too_many.inc()
                raise Refused(
                    Refusal.TOO_MANY_ATTEMPTS,
                    f"too many failed logins from {peer}: refused {_lifts(until, now)}",
                )
            return
        until = self.engineers.locked_until(engineer.name.casefold())
        if until is not None:
            self._too_many.inc()
            raise Refused(
                Refusal.TOO_MANY_ATTEMPTS,
                f"too many refused logins for engineer {engineer.name!r}: refused "
                f"{_lifts(until, now)}",
            )

    def failed(
        self, refused: Refused, peer: str, gateway_id: str, engineer: Engineer | None
    ) -> None:
        refusal = refused.refusal
        if isinstance(refused, CredentialsUnavailable):
            return
        counts_for_source = refusal in _PER_SOURCE
        counts_for_engineer = engineer is not None and refusal in _PER_ENGINEER
        if not (counts_for_source or counts_for_engineer):
            return
        counter = self._kinds.get(refusal)
        if counter is not None:
            counter.inc()
        who = engineer.name if engineer is not None else None
        gateway = peer_text(gateway_id, 64)  # the peer's bytes: escaped and cut (logsafe)
        log.warn(
            "engineer login from {peer} refused ({token}){engineer} for gateway '{gateway}'",
            peer=peer,
            token=refusal.token,
            engineer=f" for engineer {who!r}" if who else "",
            gateway=gateway,
        )
        event = (
            "engineer.not_authorised"
            if refusal is Refusal.NOT_AUTHORISED
            else "engineer.login_failed"
        )
        self._record(event, who, peer=peer, gateway=gateway, reason=refusal.token)
        if counts_for_source:
            until = self.sources.failed(source_key(peer))
            if until is not None:
                self._locked("source", until, who=None, peer=peer, source=source_key(peer))
        if counts_for_engineer:
            assert engineer is not None
            until = self.engineers.failed(engineer.name.casefold())
            if until is not None:
                self._locked("engineer", until, who=engineer.name, peer=peer)

    def _locked(self, scope: str, until: float, *, who: str | None, **details: str) -> None:
        self._lockouts[scope].inc()
        lifts = datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds")
        log.warn(
            "engineer logins locked out for {what} until {lifts}: {count} failures within "
            "{window:g} s (from {peer})",
            what=f"engineer {who!r}" if who else f"source {details.get('source')}",
            lifts=lifts,
            count=self.limits.failures,
            window=self.limits.window,
            peer=details.get("peer"),
        )
        self._record("engineer.locked_out", who, scope=scope, until=lifts, **details)

    def _record(self, event: str, who: str | None, **details: str) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(event, who=who, result="refused", **details)
        except AuditWriteError as e:
            log.error("cannot audit {event}: {error}", event=event, error=str(e))
