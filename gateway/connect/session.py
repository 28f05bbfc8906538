"""The session stream of ``gateway connect``: ask the plant, wait, forward inside it, resume, end.

The client opens ``POST SESSION_PATH`` through the relay and holds it for as long as it runs: the
open stream is the engineer's presence at the gateway, and the gateway's JSON lines
(`wire.SessionEvent`) say how the ask is going.  `SessionKeeper` turns them into the engineer's
lines and into what the client may do:

* ``waiting``: the plant has the request; a line says so at once and then every
  `WAITING_EVERY` seconds (engineer, gateway, reason, how long it has waited).
* ``approved``: the session is live; its id goes on every ``CONNECT`` (``session`` header) and the
  local connections held until now go through.
* ``denied``: the request was not approved (by staff, or nobody answered in time): exit 1.
* ``ended``: the session is over ("ended by the plant: ...", "expired", "remote access was
  switched off"): exit 0.

A stream that breaks without one of the last two (the relay restarted, the tunnel dropped, the
gateway's tunnel hiccupped) is asked again: a live session is resumed (``resume``), within the
gateway's grace period; a waiting request (the gateway withdraws it when its stream goes) is asked
again with the same reason.  Refusals are sorted by `gateway.connect.verdicts`.

Without ``--reason`` or ``--code`` the ask is empty: in ``unattended`` mode the gateway answers
with an implicit session that the plant can see and end; a gateway or relay too old to know
sessions refuses it with ``bad-request`` and the client carries on without one, as before.  Only
this mode waits out a session ended because the gateway is shutting down (a restart): an attended
session is gone then, and the engineer has to ask again anyway.
"""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from random import Random
from typing import Any
from typing import Protocol as Typed

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.connect.options import ConnectOptions
from gateway.connect.verdicts import Verdict, refusal_verdict
from gateway.net.backoff import Backoff
from gateway.tunnel.connection import TunnelConnection
from gateway.tunnel.errors import TunnelClosed
from gateway.tunnel.stream import StreamResponse, TunnelStream
from gateway.wire import (
    ENGINEER_HEADER,
    SESSION_PATH,
    SessionEvent,
    SessionEventKind,
    StreamRefused,
)

__all__ = ["WAITING_EVERY", "KeeperHost", "Phase", "SessionKeeper", "waited_text", "when_text"]

log = Logger()

WAITING_EVERY = 30.0
"""Seconds between two "waiting for the plant" lines (ten in a default 5-minute wait)."""
MAX_EVENT_LINE = 64 * 1024
RELAY_BACK_GRACE = 60.0
"""Seconds after the relay came back from an outage during which ``unknown-gateway`` is waited
out even for a gateway we never knew: a relay that has just started has seen no gateway yet."""
GATEWAY_GOING = "shutting down"
"""In the ``why`` of a session the gateway ended because it stops (``unattended`` waits it out)."""
_ENGINEER = ENGINEER_HEADER.decode("ascii")


class Phase(enum.Enum):
    STARTING = "starting"
    """Nothing asked yet."""
    ASKING = "asking"
    """An ask is on its way or about to be (again)."""
    WAITING = "waiting"
    """The plant has the request."""
    LIVE = "live"
    """In a session."""
    WITHOUT = "without"
    """No sessions here (an older gateway or relay): forwarding as before."""
    OVER = "over"
    """Denied, ended or refused: the client is finishing."""


class KeeperHost(Typed):
    """What the keeper needs of the client (`gateway.connect.client.EngineerClient`)."""

    options: ConnectOptions

    @property
    def url(self) -> str: ...

    @property
    def targets(self) -> list[str]: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def done(self) -> bool: ...

    def tunnel(self) -> Deferred[TunnelConnection]: ...

    def base_headers(self) -> list[tuple[bytes, bytes]]: ...

    def tell(self, line: str) -> None: ...

    def relay_unreachable(self, failure: Failure) -> None: ...

    def admitted(self, session: str | None) -> None: ...

    def hold(self) -> None: ...

    def finish(self, code: int) -> None: ...


def waited_text(seconds: float) -> str:
    """``42`` -> ``0:42``; ``3725`` -> ``1:02:05``."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def when_text(iso: str | None, now: float) -> str:
    """An ISO time from the gateway as the engineer reads it: ``11:35 UTC`` today, else with
    the date; as sent if it is not a time."""
    if not iso:
        return "no expiry"
    try:
        moment = datetime.fromisoformat(iso).astimezone(UTC)
    except ValueError:
        return iso
    today = datetime.fromtimestamp(now, UTC).date()
    return moment.strftime("%H:%M UTC" if moment.date() == today else "%Y-%m-%d %H:%M UTC")


class SessionKeeper:
    """Holds the session stream of one client (see the module docstring)."""

    def __init__(self, host: KeeperHost, clock: IReactorTime, rng: Random | None = None) -> None:
        self.host = host
        self.options = host.options
        self.clock = clock
        self.phase = Phase.STARTING
        self.session: str | None = None
        self.request: str | None = None
        self.engineer: str | None = None
        """As the relay authenticated us (its answer names us), for the waiting lines."""
        self.known_gateway = False
        self.http_targets: list[str] | None = None
        """The session's targets that speak HTTP, as the gateway said (None: not said yet)."""
        """The relay has seen our gateway (see `gateway.connect.verdicts`)."""
        self._stream: TunnelStream | None = None
        self._asked_at: float | None = None
        self._ticker: IDelayedCall | None = None
        self._again: IDelayedCall | None = None
        self._backoff = Backoff(rng or Random(), base=1.0, cap=15.0)
        self._told_away = False
        self._relay_back: float | None = None
        self._replaced: str | None = None
        """The implicit session a restarted gateway no longer knows (for the line on the new)."""

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.ASKING
            self._ask()

    def stop(self) -> None:
        """The client stops: no more asks or lines (its connection's GOAWAY ends the stream)."""
        for call in (self._ticker, self._again):
            if call is not None and call.active():
                call.cancel()
        self._ticker = self._again = None

    @property
    def wants_relay(self) -> bool:
        """The keeper holds (or is about to ask for) a session stream: a lost relay connection
        is redialled, and that is news for the engineer."""
        return self.phase not in (Phase.OVER, Phase.WITHOUT) and not self._done()

    def relay_returned(self) -> None:
        """The relay answers again after an outage (see `RELAY_BACK_GRACE`)."""
        self._relay_back = self.clock.seconds()

    def _relay_just_back(self) -> bool:
        back = self._relay_back
        return back is not None and self.clock.seconds() - back < RELAY_BACK_GRACE

    def _done(self) -> bool:
        return self.phase in (Phase.OVER, Phase.WITHOUT) or self.host.stopping or self.host.done

    def _over(self, line: str, code: int) -> None:
        self.phase = Phase.OVER
        self.stop()
        self.host.tell(line)
        self.host.finish(code)

    # -- asking ----------------------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        """What we ask for now: to resume our session, to use the code, the plant's approval."""
        if self.session is not None:
            return {"resume": self.session}
        if self.options.code is not None:
            return {"code": self.options.code}
        if self.options.reason is not None:
            return {"reason": self.options.reason, "targets": self.host.targets}
        return {}

    def _ask(self) -> None:
        self._again = None
        if self._done():
            return
        d = self.host.tunnel()
        d.addCallbacks(self._open, self._no_relay)
        d.addErrback(lambda f: log.failure("asking for a session", f))

    def _no_relay(self, failure: Failure) -> None:
        if self._done() or failure.check(CancelledError):
            return
        self.host.relay_unreachable(failure)  # told once per outage; fatal ones end the client
        self._ask_later()  # with backoff: the relay is dialled again when we ask again

    def _ask_later(self, delay: float | None = None) -> None:
        if self._done() or (self._again is not None and self._again.active()):
            return
        wait = self._backoff(0) if delay is None else delay
        self._again = self.clock.callLater(wait, self._ask)

    def _open(self, connection: TunnelConnection) -> None:
        if self._done():
            return
        headers = [*self.host.base_headers(), (b"content-type", b"application/json")]
        try:
            stream = connection.open_stream(
                self.options.relay.host, method="POST", path=SESSION_PATH, headers=headers
            )
        except TunnelClosed:
            self._ask_later()
            return
        self._stream = stream
        stream.attach(_EventReader(self, stream, connection))
        stream.write(json.dumps(self.body()).encode())
        stream.loseWriteConnection()
        stream.response.addCallbacks(
            lambda response: self._answered(stream, response),
            lambda failure: self._refused(stream, failure),
        )

    def _answered(self, stream: TunnelStream, response: StreamResponse) -> None:
        if stream is not self._stream:
            return
        self.engineer = response.headers.get(_ENGINEER) or self.engineer
        self.known_gateway = True
        self._told_away = False
        self._backoff.succeeded()

    def _refused(self, stream: TunnelStream, failure: Failure) -> None:
        if stream is not self._stream or self._done():
            return
        if not failure.check(StreamRefused):
            return  # cut before an answer: the reader's connectionLost asks again
        self._stream = None
        refused = failure.value
        assert isinstance(refused, StreamRefused)
        known = self.known_gateway or self._relay_just_back()
        verdict = refusal_verdict(refused, known_gateway=known)
        reason = str(refused)
        if verdict is Verdict.RETRY:
            if not self._told_away:
                self.host.tell(f"{reason}; asking again when it is back")
            self._told_away = True
            self._ask_later()
        elif verdict is Verdict.UNSUPPORTED and not self.options.attended:
            log.info(
                "no sessions on this gateway or relay ({why}); forwarding as before", why=reason
            )
            self.phase = Phase.WITHOUT
            self.host.tell(
                f"gateway {self.options.gateway!r} takes no sessions; open {self.host.url}"
            )
        elif verdict is Verdict.UNSUPPORTED:
            self._over(
                f"gateway {self.options.gateway!r} cannot take session requests ({reason}): "
                "are the gateway and the relay as new as this client?",
                1,
            )
        elif verdict is Verdict.ENDED and not self.options.attended:
            # The implicit session went with the gateway process that knew it (a restart, a
            # replaced gateway): ask for a new one; connections wait for it (`hold`).
            self._replaced = self.session or self._replaced
            self.session = None
            self.host.hold()
            self._ask_later(0)
        elif verdict is Verdict.ENDED:
            self._over(reason, 0)
        else:  # FATAL, REFUSED
            self._over(reason, 1)

    # -- what the gateway says -----------------------------------------------------------------

    def event(self, stream: TunnelStream, event: SessionEvent) -> None:
        if stream is not self._stream or self._done():
            return
        self.known_gateway = True
        if event.event is SessionEventKind.WAITING:
            self._waiting(event)
        elif event.event is SessionEventKind.APPROVED:
            self._approved(event)
        elif event.event is SessionEventKind.DENIED:
            what = f"request {self.request}" if self.request else "the request"
            why = f": {event.reason}" if event.reason else ""
            self._over(f"{what} was not approved{why}", 1)
        elif event.event is SessionEventKind.ENDED:
            self._ended(event)
        elif event.event is SessionEventKind.CHANGED:
            self._permission_changed(event)

    def _waiting(self, event: SessionEvent) -> None:
        self.phase = Phase.WAITING
        now = self.clock.seconds()
        expires = when_text(event.expires, now)
        if self.request is None:
            self.host.tell(
                f"gateway {self.options.gateway!r} is in attended mode: the plant has your "
                f"request {event.request} (it expires at {expires})"
            )
        else:
            self.host.tell(f"asked the plant again: request {event.request} (expires {expires})")
        self.request = event.request
        if self._asked_at is None:
            self._asked_at = now
        self._tell_waiting()
        self._tick()

    def _tell_waiting(self) -> None:
        waited = self.clock.seconds() - (self._asked_at or self.clock.seconds())
        who = f"engineer {self.engineer}, " if self.engineer else ""
        reason = self.options.reason or ""
        self.host.tell(
            f"waiting for the plant to approve: {who}gateway {self.options.gateway}, "
            f"reason {reason!r} (waited {waited_text(waited)})"
        )

    def _tick(self) -> None:
        if self._ticker is None or not self._ticker.active():
            self._ticker = self.clock.callLater(WAITING_EVERY, self._tock)

    def _tock(self) -> None:
        self._ticker = None
        if self.phase is Phase.WAITING and not self._done():
            self._tell_waiting()
            self._tick()

    def _stop_ticking(self) -> None:
        if self._ticker is not None and self._ticker.active():
            self._ticker.cancel()
        self._ticker = None

    def _approved(self, event: SessionEvent) -> None:
        self._stop_ticking()
        self.phase = Phase.LIVE
        self.http_targets = list(event.http_targets)
        before, self.session = self.session, event.session or self.session
        self.request = None
        self._told_away = False
        self._backoff.succeeded()
        replaced, self._replaced = self._replaced, None
        if before is not None and before == self.session:
            self.host.tell(f"session {self.session} resumed")
        elif replaced is not None and not self.options.attended:
            self.host.tell(
                f"gateway {self.options.gateway!r} no longer knows session {replaced} (it "
                f"restarted); carrying on in new session {self.session}"
            )
        elif not self.options.attended:
            self.host.tell(
                f"gateway {self.options.gateway!r} is online; open {self.host.url} (session "
                f"{self.session}, unattended mode: the plant sees this connection and can end it)"
            )
        else:
            self.host.tell(self._approved_line(event))
        self.host.admitted(self.session)

    def _permission_changed(self, event: SessionEvent) -> None:
        by = f" ({event.approved_by})" if event.approved_by else ""
        if event.permission == "view":
            what = "view only: pages load, anything that would change the processor is refused"
        else:
            what = f"{event.permission or 'full'} control"
        where = f" on {', '.join(event.targets)}" if event.targets else ""
        self.host.tell(
            f"the plant changed session {event.session or self.session}{by}{where}: {what}"
        )

    def _approved_line(self, event: SessionEvent) -> str:
        targets = ", ".join(event.targets) or "all"
        until = when_text(event.expires, self.clock.seconds())
        by = f" (approved by {event.approved_by})" if event.approved_by else ""
        line = (
            f"the plant let you in: session {self.session}, "
            f"{'target' if len(event.targets) == 1 else 'targets'} {targets}, "
            f"{event.permission or 'full'} permission, until {until}{by}; open {self.host.url}"
        )
        missing = [t for t in self.host.targets if event.targets and t not in event.targets]
        if missing:
            names = ", ".join(repr(t) for t in missing)
            plural = "s" if len(missing) > 1 else ""
            line += f" (note: the session does not cover target{plural} {names})"
        return line

    def _ended(self, event: SessionEvent) -> None:
        why = event.why or "ended"
        session = event.session or self.session
        if not self.options.attended and GATEWAY_GOING in why:
            self.host.tell(f"session {session} ended: {why}; waiting for the gateway")
            self._replaced = session
            self.session = None
            self.host.hold()
            self.phase = Phase.ASKING
            return  # the stream ends next: asked again (empty) with backoff
        self._over(f"session {session} ended: {why}", 0)

    # -- a stream that goes ----------------------------------------------------------------------

    def garbled(self, stream: TunnelStream, what: str) -> None:
        """Not a session event: say so in the log and ask again on a fresh stream."""
        if stream is not self._stream:
            return
        log.warn("the session stream sent {what}; asking again", what=what)
        stream.reset()

    def stream_lost(self, stream: TunnelStream, connection: TunnelConnection) -> None:
        if stream is not self._stream:
            return
        self._stream = None
        self._stop_ticking()
        if self._done():
            return
        relay_lost = connection.closed  # the client told of that already
        gateway = self.options.gateway
        if self.session is not None and not relay_lost:
            self.host.tell(
                f"the session stream to gateway {gateway!r} was cut; resuming session "
                f"{self.session}"
            )
        elif self.request is not None and not relay_lost:
            self.host.tell(
                f"the stream of request {self.request} to gateway {gateway!r} was cut; asking "
                "the plant again"
            )
        if self.phase is Phase.WAITING:
            self.phase = Phase.ASKING
        if self.session is not None:
            # Until the gateway says the session is still live, a new connection would name a
            # session it may not know any more (it restarted): connections wait for the answer.
            self.host.hold()
        self._ask_later(0 if relay_lost else None)


class _EventReader(Protocol):
    """Reads the gateway's JSON lines off the session stream for the keeper."""

    def __init__(
        self, keeper: SessionKeeper, stream: TunnelStream, connection: TunnelConnection
    ) -> None:
        self.keeper, self.stream, self.connection = keeper, stream, connection
        self.partial = b""

    def dataReceived(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        if len(self.partial) > MAX_EVENT_LINE:
            self.partial = b""
            self.keeper.garbled(self.stream, f"a line over {MAX_EVENT_LINE} bytes")
            return
        for line in lines:
            if not line.strip():
                continue
            try:
                event = SessionEvent.from_line(line)
            except (ValueError, TypeError):
                self.keeper.garbled(self.stream, "a line that is not a session event")
                return
            self.keeper.event(self.stream, event)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.keeper.stream_lost(self.stream, self.connection)
