"""Streams to ``http`` targets: the splice ends that follow requests, and what a session allows.

`FollowedStreamEnd` is the engineer's end of the splice: it hands the engineer's bytes to a
`RequestFollower` instead of writing them straight to the processor.  `PeekedProcessorEnd` is the
processor's end: it writes the processor's bytes on first, unchanged, then lets the follower peek
at them (each answer's status and end).  The splice itself (`gateway.splice`) is unchanged.

`session_rules` is the verdict on each request: taken when the request's head is complete, from
the session as it is *now* (`ISessionLookup.grant`), so that the plant's switch of a live session
between ``view`` and ``full`` applies to the next request on every open connection.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import Target
from gateway.edge.access import Grant, ISessionLookup, Permission
from gateway.edge.httpfollow import Decide, Exchange, Refuse, RequestFollower, RequestHead
from gateway.splice import SpliceEnd

VIEW_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""What a view-only session may ask of an ``http`` target."""


def view_only_reason(target: Target, session: str, method: str) -> str:
    return (
        f"the plant granted view-only access to {target.name!r} in session {session}: "
        f"{method} requests are refused; ask the plant for full access if you need to change "
        "something"
    )


def body_reason(target: Target, session: str, method: str) -> str:
    return (
        f"the plant granted view-only access to {target.name!r} in session {session}: "
        f"a {method} request with a body is refused"
    )


def websocket_reason(target: Target, session: str) -> str:
    return (
        f"the plant granted view-only access to {target.name!r} in session {session}, and this "
        "target does not let view-only sessions open WebSockets (view_websocket = false)"
    )


def session_rules(target: Target, session: str | None, sessions: ISessionLookup | None) -> Decide:
    """Each request's verdict under the session's permission as it is when the request comes."""

    def grant() -> Grant | None:
        if session is None or sessions is None:
            return None
        return sessions.grant(session)

    def decide(head: RequestHead) -> Refuse | None:
        if session is None or sessions is None:
            return None  # no sessions at all (a bare allowlist): nothing to hold it to
        live = grant()
        if live is None:
            return Refuse(410, f"session {session} is not live any more", "session-ended")
        if live.permission_on(target.name) is Permission.FULL:
            return None
        if head.upgrade is not None or head.method == "CONNECT":
            if target.view_websocket and head.method == "GET" and head.upgrade == "websocket":
                return None
            return Refuse(403, websocket_reason(target, session), "view-only")
        if head.method not in VIEW_METHODS:
            return Refuse(403, view_only_reason(target, session, head.method), "view-only")
        if head.has_body:
            # A processor that ignores a GET's body would read it as the next request, which
            # the gateway never decided: under view a read carries no body.
            return Refuse(403, body_reason(target, session, head.method), "view-only")
        return None

    return decide


class PeekedProcessorEnd(SpliceEnd):
    """The processor's end: its bytes go on unchanged, then the follower peeks at them."""

    follower: RequestFollower | None = None

    def dataReceived(self, data: bytes) -> None:
        SpliceEnd.dataReceived(self, data)
        follower = self.follower
        if follower is not None:
            follower.response_bytes(data)


class FollowedStreamEnd(SpliceEnd):
    """The engineer's end: bytes go through the follower, which passes on what it lets through."""

    def __init__(
        self,
        decide: Decide,
        processor: PeekedProcessorEnd,
        *,
        target: Target,
        on_bytes: Callable[[int], None] | None = None,
        seen: Callable[[Exchange], None] | None = None,
    ) -> None:
        super().__init__(on_bytes=on_bytes)
        self.target = target
        self.follower = RequestFollower(
            decide, forward=self._forward, answer=self._answer, close=self._close, seen=seen
        )
        processor.follower = self.follower

    @property
    def unfit_for_view(self) -> bool:
        """Upgraded to a protocol a view-only session may not hold (its bytes pass unread)."""
        switched = self.follower.switched_to
        if switched is None:
            return False
        return not (switched == "websocket" and self.target.view_websocket)

    def dataReceived(self, data: bytes) -> None:
        if self.guard is not None:
            self.guard.activity()
        self.bytes += len(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))
        self.follower.request_bytes(data)

    def _forward(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            self._early.append(data)  # written by splice() once joined
        elif not peer.lost:
            peer.transport.write(data)

    def _answer(self, data: bytes) -> None:
        if not self.lost:
            self.transport.write(data)

    def _close(self, why: str) -> None:
        """A request the gateway could not read: the processor gets nothing more."""
        peer = self.peer
        if peer is not None and not peer.lost:
            peer.transport.loseWriteConnection()  # its close then ends the stream gracefully
        if not self.lost:
            self.transport.loseConnection()
