"""The support desk's view of the gateways connected to this relay (``gateway relay sessions``).

For each gateway whose live tunnel this relay holds: where it connects from and since when, and
what its plant lets in now: the access mode, the engineers' requests waiting for an answer and the
live sessions.  Only the gateway knows the second part (BRIEF section 3, "The gateway decides"),
so the desk asks each one over its tunnel's control channel (``GET SESSIONS_PATH``, answered with
a `gateway.wire.SessionsSummary`).  The relay shows what the gateway says and decides nothing with
it.

All gateways are asked at once, each within `ANSWER_TIMEOUT`: a gateway that is slow, refuses the
question (an older gateway without the route), resets it or answers something that is not a
summary is still listed, as connected with its sessions unknown and why, and never holds the
others up.  An answer is read up to `MAX_ANSWER` bytes and only its known fields are kept, each
checked for its type and cut to a bounded length, so the view is the relay's contract and not
whatever a gateway sends.

The question goes straight onto the tunnel, as the dialer's streams do: it is the relay's own
control request, not an engineer's, so no engineer path step (token, authorisation, limits)
applies to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.logsafe import peer_text
from gateway.relay.directory import GatewayLocation, IGatewayDirectory
from gateway.relay.gateways import GatewayTunnels, LiveTunnel
from gateway.tunnel.connection import TunnelConnection
from gateway.tunnel.errors import StreamReset, TunnelClosed
from gateway.tunnel.stream import StreamResponse, TunnelStream
from gateway.wire import SESSIONS_PATH, StreamRefused

__all__ = [
    "ANSWER_TIMEOUT",
    "MAX_ANSWER",
    "DeskRequest",
    "DeskSession",
    "GatewayReport",
    "Summary",
    "SupportDesk",
    "read_summary",
]

log = Logger()

ANSWER_TIMEOUT = 2.0
"""Seconds a gateway has to report its sessions; a gateway answers at once unless it is stuck
(or its tunnel is, behind a download that the heartbeat has not yet given up on)."""
MAX_ANSWER = 1024 * 1024
"""Bytes of a gateway's summary read at most (thousands of sessions fit)."""
MAX_TEXT = 1000
"""Characters kept of a reason or any other text a gateway reports."""
MAX_NAME = 200
MAX_ITEMS = 1000
"""Requests, sessions, targets or connections kept of one list."""


@frozen
class DeskRequest:
    """An engineer's request for a session, waiting for the plant's answer."""

    id: str
    engineer: str
    reason: str
    targets: list[str]
    """Empty: every target the gateway allows."""
    asked: str | None
    """ISO 8601 (UTC), as the gateway's clock said; None if it gave no readable time."""
    expires: str | None
    """When the request is denied unless someone answers it."""


@frozen
class DeskSession:
    """A live session: who, to what, how, until when, with which engineer connections."""

    id: str
    engineer: str
    reason: str
    targets: list[str]
    permission: str
    started: str | None
    expires: str | None
    """None: no expiry (an implicit session of unattended mode)."""
    approved_by: str
    connections: list[str]
    """The relay's ids of the engineer connections in it (``c-...``, as in both sides' logs)."""
    implicit: bool


@frozen
class Summary:
    """What a gateway reported, checked."""

    mode: str
    requests: list[DeskRequest]
    sessions: list[DeskSession]


@frozen
class GatewayReport:
    """One connected gateway as the desk shows it (``attrs.asdict`` is its JSON)."""

    id: str
    address: str
    """Where its tunnel comes from (``host:port``), as this relay sees it."""
    connected_since: str | None
    """ISO 8601 (UTC) by this relay's clock: when its current tunnel came up."""
    streams: int
    """Streams open on its tunnel at this relay when it was asked."""
    mode: str | None
    """Its access mode; None while its sessions are unknown."""
    requests: list[DeskRequest] | None
    sessions: list[DeskSession] | None
    sessions_unknown: str | None = None
    """Why the gateway's mode, requests and sessions are not known (None: they are)."""


Answer = Summary | str
"""A gateway's checked summary, or why there is none."""


class SupportDesk:
    """Asks every gateway connected to this relay for its sessions, all at once, bounded."""

    def __init__(
        self,
        tunnels: GatewayTunnels,
        directory: IGatewayDirectory,
        clock: IReactorTime,
        *,
        timeout: float = ANSWER_TIMEOUT,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        self._tunnels = tunnels
        self._directory = directory
        self._clock = clock
        self.timeout = timeout
        self._max_answer = max_answer
        self._asking: set[_Question] = set()

    def gateways(self) -> Deferred[list[GatewayReport]]:
        """A report on each connected gateway, by id; fires within the timeout, never fails."""
        reports = [self._report(gid, live) for gid, live in sorted(self._tunnels.live().items())]
        return gatherResults(reports, consumeErrors=True)

    def stop(self) -> None:
        """The relay is stopping: answer every question still out, leave no timer behind."""
        for question in list(self._asking):
            question.finish("the relay is stopping")

    def _report(self, gateway_id: str, live: LiveTunnel) -> Deferred[GatewayReport]:
        streams = len(live.tunnel.streams)
        question = _Question(gateway_id, live.tunnel, self._clock, self._max_answer)
        self._asking.add(question)
        answer = question.ask(self.timeout)
        answer.addBoth(self._answered, question)
        # Where it is, asked at the same time (a shared directory may take a moment too).
        located: Deferred[GatewayLocation | None] = self._directory.locate(gateway_id).addErrback(
            self._not_located, gateway_id
        )

        def report(got: Answer) -> Deferred[GatewayReport]:
            return located.addCallback(
                lambda location: _report(gateway_id, live.peer, location, streams, got)
            )

        done: Deferred[GatewayReport] = answer.addCallback(report)
        return done.addErrback(self._crashed, gateway_id, live, streams)

    def _answered(self, answer: Answer | Failure, question: _Question) -> Answer | Failure:
        self._asking.discard(question)
        if isinstance(answer, str):
            log.info(
                "support desk: gateway {gw} did not report its sessions: {why}",
                gw=question.gateway_id,
                why=peer_text(answer, 300),
            )
        return answer

    def _not_located(self, failure: Failure, gateway_id: str) -> None:
        log.failure("support desk: where is gateway {gw}?", failure, gw=gateway_id)
        return None

    def _crashed(
        self, failure: Failure, gateway_id: str, live: LiveTunnel, streams: int
    ) -> GatewayReport:
        log.failure("support desk: reporting on gateway {gw}", failure, gw=gateway_id)
        return _report(gateway_id, live.peer, None, streams, "the relay failed to ask it")


def _report(
    gateway_id: str,
    address: str,
    location: GatewayLocation | None,
    streams: int,
    answer: Answer,
) -> GatewayReport:
    since = None if location is None else location.connected_since
    common: dict[str, Any] = {
        "id": gateway_id,
        "address": address,
        "connected_since": None if since is None else _iso(since),
        "streams": streams,
    }
    if isinstance(answer, str):
        return GatewayReport(
            **common, mode=None, requests=None, sessions=None, sessions_unknown=answer
        )
    return GatewayReport(
        **common, mode=answer.mode, requests=answer.requests, sessions=answer.sessions
    )


class _Question:
    """One ``GET SESSIONS_PATH`` on one gateway's tunnel: an answer, or why not, exactly once."""

    def __init__(
        self, gateway_id: str, tunnel: TunnelConnection, clock: IReactorTime, limit: int
    ) -> None:
        self.gateway_id = gateway_id
        self._tunnel = tunnel
        self._clock = clock
        self._limit = limit
        self._done: Deferred[Answer] = Deferred()
        self._stream: TunnelStream | None = None
        self._timer: IDelayedCall | None = None
        self._answered = False
        self._finished = False

    def ask(self, timeout: float) -> Deferred[Answer]:
        try:
            stream = self._tunnel.open_stream(
                self.gateway_id, method="GET", path=SESSIONS_PATH, end_stream=True
            )
        except TunnelClosed as e:
            self.finish(f"its tunnel is closing ({e})")
            return self._done
        self._stream = stream
        self._timer = self._clock.callLater(timeout, self.finish, f"no answer within {timeout:g} s")
        stream.attach(_Body(self._limit, self._body, self.finish))
        stream.response.addCallbacks(self._response, self._refused)
        return self._done

    def _response(self, response: StreamResponse) -> None:
        self._answered = True  # a 200: the summary follows as the body

    def _refused(self, failure: Failure) -> None:
        if failure.check(StreamRefused):
            refused = failure.value
            assert isinstance(refused, StreamRefused)
            self.finish(f"the gateway refused the question ({refused})")
        elif failure.check(StreamReset):
            self.finish("the gateway reset the question")
        else:
            self.finish(f"no answer ({failure.getErrorMessage()})")

    def _body(self, body: bytes) -> None:
        if not self._answered:
            return  # a refusal's empty body: _refused says why
        self.finish(read_summary(body, self.gateway_id))

    def finish(self, answer: Answer) -> None:
        if self._finished:
            return
        self._finished = True  # first: withdrawing the question below calls back in here
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        stream = self._stream
        if isinstance(answer, str) and stream is not None and not stream.finished:
            stream.abortConnection()  # late, too long or broken: the gateway may stop writing
        self._done.callback(answer)


@implementer(IHalfCloseableProtocol)
class _Body(Protocol):
    """Collects an answer's body up to ``limit`` bytes; says when it is complete or broke off."""

    def __init__(
        self, limit: int, complete: Callable[[bytes], None], failed: Callable[[str], None]
    ) -> None:
        self._limit = limit
        self._complete = complete
        self._failed = failed
        self._parts: list[bytes] = []
        self._size = 0
        self._ended = False

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._ended, self._parts = True, []
            self._failed(f"its answer is over {self._limit} bytes")
            return
        self._parts.append(data)

    def readConnectionLost(self) -> None:
        if not self._ended:
            self._ended = True
            body, self._parts = b"".join(self._parts), []
            self._complete(body)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self._ended:
            self._ended = True
            self._failed("its answer broke off")


# -- reading a summary --------------------------------------------------------------------------


def read_summary(body: bytes, gateway_id: str) -> Answer:
    """A gateway's ``SessionsSummary``, checked; or why it is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        return "its answer is not JSON"
    if not isinstance(data, dict):
        return "its answer is not a sessions summary"
    said = data.get("id")
    if said != gateway_id:
        return f"it answered as gateway {peer_text(str(said), 100)!r}"
    mode, requests, sessions = data.get("access_mode"), data.get("requests"), data.get("sessions")
    if (
        not isinstance(mode, str)
        or not isinstance(requests, list)
        or not isinstance(sessions, list)
    ):
        return "its answer is not a sessions summary (access_mode, requests, sessions)"
    return Summary(
        mode=mode[:MAX_NAME],
        requests=[_request(r) for r in requests[:MAX_ITEMS] if isinstance(r, dict)],
        sessions=[_session(s) for s in sessions[:MAX_ITEMS] if isinstance(s, dict)],
    )


def _request(data: dict[str, Any]) -> DeskRequest:
    return DeskRequest(
        id=_text(data.get("id"), MAX_NAME),
        engineer=_text(data.get("engineer"), MAX_NAME),
        reason=_text(data.get("reason")),
        targets=_names(data.get("targets")),
        asked=_moment(data.get("asked")),
        expires=_moment(data.get("expires")),
    )


def _session(data: dict[str, Any]) -> DeskSession:
    return DeskSession(
        id=_text(data.get("id"), MAX_NAME),
        engineer=_text(data.get("engineer"), MAX_NAME),
        reason=_text(data.get("reason")),
        targets=_names(data.get("targets")),
        permission=_text(data.get("permission"), MAX_NAME),
        started=_moment(data.get("started")),
        expires=_moment(data.get("expires")),
        approved_by=_text(data.get("approved_by"), MAX_NAME),
        connections=_names(data.get("connections")),
        implicit=data.get("implicit") is True,
    )


def _text(value: object, limit: int = MAX_TEXT) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _names(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v[:MAX_NAME] for v in value[:MAX_ITEMS] if isinstance(v, str)]


def _moment(value: object) -> str | None:
    """An ISO 8601 time as UTC to the second; None for anything else."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
