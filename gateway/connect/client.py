"""``gateway connect``: the engineer's local port that reaches one processor target.

One TLS connection to the relay (CA pinned, host name checked) carries every local connection as
its own HTTP/2 stream, so opening a page costs no new TLS handshake.  A local connection's bytes
are sent right behind the stream's request, without waiting for the answer; if the relay or the
gateway refuses, the engineer gets one clear line and only that connection ends.

The session (`gateway.connect.session.SessionKeeper`) is the client's spine: its stream, held
open through the relay for as long as the client runs, is the engineer's presence at the gateway
and tells the client when it may forward (approved), must give up (denied, refused: exit 1) or is
done (the session ended: exit 0).  With ``--reason`` or ``--code`` local connections made before
the plant lets the engineer in are *held* (not read, not refused) and go through once it does;
they are closed if it does not.

The relay connection is dialled when something needs it (the session stream, a local
connection), never for its own sake: a relay closes an authenticated connection that carries no
stream (``idle``) and an unauthenticated one that presents no token, and a client that redialled
whatever happened would be closed and redial for ever.  A dial that fails for a reason no retry
mends (the relay's certificate is not from the pinned CA, or not for the name dialled) ends the
client (exit 1); anything else is an outage, told once, and the keeper asks again with backoff.

What the client tells the engineer goes to ``report``, one line per event, and nothing at all
once we are stopping (our own goodbye is not a lost connection).  Only the wire contract is
shared with the relay and the gateway (`gateway.wire`); nothing of either is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from random import Random
from typing import Any

from h2 import events as h2events
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.connect.group import GroupProblem, listen_problem, read_members
from gateway.connect.options import ConnectOptions
from gateway.connect.session import Phase, SessionKeeper
from gateway.connect.verdicts import Verdict, dial_is_fatal, refusal_verdict
from gateway.httppage import error_page, http_request_line, wants_json
from gateway.logsafe import peer_text
from gateway.net.endpoints import listen_endpoint, quiet_factory
from gateway.net.sockets import limit_receive_buffer
from gateway.reactor import IGatewayReactor
from gateway.splice import HalfCloseGuard, SpliceEnd, splice
from gateway.tls import TLSClientEndpoint, client_options
from gateway.tls.errors import describe_tls_failure
from gateway.tunnel.batch import WriteBatch
from gateway.tunnel.connection import NullObserver, TunnelConnection
from gateway.tunnel.errors import TunnelClosed
from gateway.tunnel.stream import TunnelStream
from gateway.wire import (
    AUTHORIZATION_HEADER,
    GATEWAY_HEADER,
    GATEWAY_INFO_PATH,
    SESSION_HEADER,
    Refusal,
    StreamRefused,
)

__all__ = ["MAX_HELD", "EngineerClient", "LocalConnection", "Report"]

log = Logger()

SNIFF_SECONDS = 1.0
"""How long a refused connection that has sent nothing yet may take to send its request line."""
FIRST_BYTES_KEPT = 2048
"""Bytes of a browser connection's start kept to see whether it speaks HTTP (and wants JSON)."""
HALF_CLOSE_TIMEOUT = 300.0
"""Seconds a half-closed local connection may stay quiet before it is ended.  A backstop: the
gateway ends a quiet half-closed stream after its plant's own limit (default 30 s)."""

Report = Callable[[str], None]

MAX_HELD = 32
"""Local connections held while the plant has not answered yet; more are closed at once (a
browser opens a handful; a script in a loop must not pile up sockets)."""
GROUP_RETRY = 5.0
"""Seconds between two asks for a group's members while its gateway is offline."""
GROUP_ANSWER_TIMEOUT = 10.0
"""Seconds the relay has to say which members a group has (it asks the gateway within 2)."""
MAX_GROUP_INFO = 256 * 1024
GOAWAY_IDLE = "idle"
"""The relay's GOAWAY debug data when it closes a connection that carried no stream."""


class RelayConnection(TunnelConnection):
    """The client's tunnel to the relay; remembers why the relay closed it (GOAWAY debug data),
    which is what the relay has to say when it ends the engineer's access."""

    goaway: str | None = None

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, h2events.ConnectionTerminated) and event.additional_data:
            self.goaway = peer_text(event.additional_data, 200)
        super()._dispatch(event)


class _RelayObserver(NullObserver):
    """Hands the relay connection's life to the client, which decides what to tell."""

    def __init__(self, client: EngineerClient) -> None:
        self.name = f"relay {client.options.relay}"
        self._client = client

    def tunnel_ready(self, connection: TunnelConnection) -> None:
        self._client._relay_up(connection)

    def tunnel_lost(self, connection: TunnelConnection, reason: Failure) -> None:
        self._client._relay_lost(connection, reason)


class LocalConnection(SpliceEnd):
    """A browser connection on the local port, forwarded through its own stream."""

    def __init__(self, client: EngineerClient, target: str | None = None) -> None:
        super().__init__()
        self.client = client
        self.target = target or client.options.target
        """The target this connection's stream goes to (a group's member: its port's)."""
        self.forwarding = False
        self._first = b""  # the browser's first bytes: is it speaking HTTP?
        self._stream_end: SpliceEnd | None = None
        self._unanswered: tuple[int, str, str] | None = None
        """A refusal waiting for the first request line, to be told in a page or not."""
        self._sniffing: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if len(self._first) < FIRST_BYTES_KEPT:
            self._first += data[: FIRST_BYTES_KEPT - len(self._first)]
        if self._unanswered is not None:
            if self._http_verdict() is not None:
                self._answer_now()
            return  # the stream is gone: what the browser sends now goes nowhere
        super().dataReceived(data)

    def connectionMade(self) -> None:
        super().connectionMade()
        # An upload's bytes wait in our kernel buffers, not ahead of the processor: see there.
        limit_receive_buffer(self.transport)
        # Hold the browser's bytes until the stream exists (or the plant lets us in).
        self.transport.pauseProducing()
        self.client.local_arrived(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._sniffing is not None and self._sniffing.active():
            self._sniffing.cancel()
        self._sniffing = self._unanswered = None
        if reason is None:
            super().connectionLost()
        else:
            super().connectionLost(reason)
        self.client.local_gone(self)

    def forward(self) -> None:
        """Open this connection's stream (once the relay connection is up)."""
        if self.lost or self.forwarding:
            return
        self.forwarding = True
        d = self.client.tunnel()
        d.addCallbacks(self._open, self._relay_unreachable)
        d.addErrback(lambda f: log.failure("forwarding a local connection", f))

    def close(self) -> None:
        if not self.lost:
            self.transport.abortConnection()

    def _http_verdict(self) -> bool | None:
        """Does the local application speak HTTP?  None: it has not said enough yet.

        The gateway said so for ``http`` targets; otherwise the first request line tells.  A
        target the gateway called ``tcp`` that has sent nothing is taken at its word (its
        protocol may wait for the server to speak first).
        """
        known = self.client.keeper.http_targets
        if known is not None and self.target in known:
            return True
        verdict = http_request_line(self._first)
        if verdict is None and known is not None:
            return False
        return verdict

    def answer_refusal(self, status: int, token: str, reason: str) -> None:
        """Tell a browser why in a page (the line the engineer is told), else cut as before.

        A connection held before its stream opened has sent nothing we read yet: it is given a
        moment (``SNIFF_SECONDS``) to send its request line.
        """
        if self.lost:
            return
        end, self._stream_end = self._stream_end, None
        if end is not None:
            # Unsplice first: the stream's end would otherwise abort the page on its way.
            end.peer = self.peer = None
            end.finish_writing()
            self.finish_writing()
        self._unanswered = (status, token, reason)
        if self._http_verdict() is None:
            self.transport.resumeProducing()
            self._sniffing = self.client.reactor.callLater(SNIFF_SECONDS, self._answer_now)
            return
        self._answer_now()

    def answer_at_once(self) -> None:
        """Decide now whether a refusal waiting for the request line is told in a page."""
        if self._unanswered is not None:
            self._answer_now()

    def _answer_now(self) -> None:
        if self._sniffing is not None and self._sniffing.active():
            self._sniffing.cancel()
        self._sniffing = None
        unanswered, self._unanswered = self._unanswered, None
        if unanswered is None or self.lost:
            return
        if not self._http_verdict():
            self.close()
            return
        status, token, reason = unanswered
        self.transport.write(
            error_page(
                403 if status == 401 else status,
                token,
                reason,
                wants_json=wants_json(self._first),
                head_only=self._first.startswith(b"HEAD "),
                close=True,
            )
        )
        self.transport.resumeProducing()  # read (and drop) what follows until it closes
        self.transport.loseConnection()

    def _relay_unreachable(self, failure: Failure) -> None:
        # The client told the engineer why, once per outage; the browser gets the same words.
        self.answer_refusal(
            Refusal.GATEWAY_OFFLINE.status,
            "relay-unreachable",
            f"gateway connect cannot reach relay {self.client.options.relay} right now; it "
            "keeps trying: reload the page in a moment",
        )

    def _open(self, connection: TunnelConnection) -> None:
        if self.lost:
            return
        try:
            stream = connection.open_stream(self.target, headers=self.client.stream_headers())
        except TunnelClosed as e:
            self.client.tell(f"relay connection is closing ({e}); try again")
            self.answer_refusal(
                Refusal.SHUTTING_DOWN.status,
                Refusal.SHUTTING_DOWN.token,
                f"the relay connection is closing ({e}); reload the page in a moment",
            )
            return
        stream.response.addErrback(self._refused)
        stream_end = self._stream_end = SpliceEnd()
        stream.attach(stream_end)
        HalfCloseGuard(self, stream_end, self.client.reactor, HALF_CLOSE_TIMEOUT)
        splice(self, stream_end)
        self.transport.resumeProducing()

    def _refused(self, failure: Failure) -> None:
        if failure.check(StreamRefused):
            refused = failure.value
            assert isinstance(refused, StreamRefused)
            self.client.stream_refused(refused)
            self.answer_refusal(refused.status, refused.token, str(refused))
            return
        if not self.lost and not self.client.stopping:
            self.client.tell(f"the stream was cut: {failure.value}")
        self.close()


class EngineerClient(MultiService):
    """The local listener, the relay connection (dialled on demand) and the session keeper.

    ``endpoint`` is how the relay is dialled; by default TLS to ``options.relay`` with the CA in
    ``options.ca`` pinned (tests pass an in-memory one).  ``finished`` fires with the exit code
    once the client has decided to end (denied, refused, ended, a fatal mistake); the program
    then stops the service.  A signal stops it without ``finished`` firing (exit 0).
    """

    def __init__(
        self,
        options: ConnectOptions,
        reactor: IGatewayReactor,
        report: Report,
        *,
        endpoint: IStreamClientEndpoint | None = None,
        rng: Random | None = None,
    ) -> None:
        super().__init__()
        self.options = options
        self.report = report
        self.reactor = reactor
        self.url = f"http://{options.listen}/"
        self.stopping = False
        self.exit_code: int | None = None
        self.finished: Deferred[int] = Deferred()
        self.current: TunnelConnection | None = None
        self.session: str | None = None
        """The live session the client forwards in (its id goes on every CONNECT)."""
        self.admitted_now = not options.attended
        """Local connections go through (without --reason/--code: at once)."""
        self._held: list[LocalConnection] = []
        self._told_holding = False
        self._unreachable_told = False
        self._connecting: Deferred[IProtocol] | None = None
        self._dialled: TunnelConnection | None = None
        self._waiters: list[Deferred[TunnelConnection]] = []
        self._locals: set[LocalConnection] = set()
        if endpoint is None:
            endpoint = TLSClientEndpoint(
                HostnameEndpoint(reactor, options.relay.host, options.relay.port, timeout=10),
                client_options(options.server_name or options.relay.host, options.ca),
                reactor,
            )
        self._endpoint = endpoint
        observer = _RelayObserver(self)
        batch = WriteBatch()
        self._factory = quiet_factory(
            lambda: RelayConnection(client_side=True, clock=reactor, observer=observer, batch=batch)
        )
        self.members: dict[int, str] | None = None
        """``--group``: ``{port: member}`` once the relay said (the group's page first)."""
        self.listeners: list[StreamServerEndpointService] = []
        self._group_info: TunnelStream | None = None
        self._group_timer: IDelayedCall | None = None
        self._group_told: str | None = None
        if options.group is None:
            local = quiet_factory(lambda: LocalConnection(self))
            self.listener = StreamServerEndpointService(
                listen_endpoint(reactor, options.listen), local
            )
            self.listener.setServiceParent(self)
            self.listeners.append(self.listener)
        else:
            self.url = f"http://{options.member_address(0).host}/"
        self.keeper = SessionKeeper(self, reactor, rng)

    @property
    def targets(self) -> list[str]:
        """What the client forwards to: its target, or its group's members (once known)."""
        if self.options.group is None:
            return [self.options.target]
        return list((self.members or {}).values())

    # -- life -------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.exit_code is not None

    def startService(self) -> None:
        super().startService()
        if self.options.group is None:
            self.keeper.start()
        else:
            self._ask_group()

    def stopService(self) -> Deferred[None]:
        """Say goodbye to the relay (GOAWAY, TLS close) rather than just dropping the socket."""
        if not self.running:
            return succeed(None)
        self.stopping = True
        self.keeper.stop()
        if self._group_timer is not None and self._group_timer.active():
            self._group_timer.cancel()
        self._group_timer = None
        for held in list(self._held):
            held.close()
        self._held.clear()
        for local in list(self._locals):
            local.answer_at_once()  # one waiting for its request line to be told why
        if self._connecting is not None:
            self._connecting.cancel()
        for connection in (self.current, self._dialled):
            if connection is not None:
                connection.close()
        self._fail_waiters(Failure(TunnelClosed("the client is stopping")))
        stopped: Deferred[None] = super().stopService()
        lost = [c.when_lost() for c in (self.current, self._dialled) if c is not None]
        both: Deferred[Any] = gatherResults([stopped, *lost], consumeErrors=True)
        return both.addCallback(lambda _: None)

    def finish(self, code: int) -> None:
        """The client is done (see the class docstring); the first verdict wins."""
        if self.done or self.stopping:
            return
        self.exit_code = code
        self.finished.callback(code)

    def fail(self, line: str) -> None:
        """A mistake no retry mends: one line, exit 1."""
        if not self.done:
            self.tell(line)
            self.finish(1)

    # -- a target group (--group) -----------------------------------------------------------------

    def _ask_group(self) -> None:
        """Ask the relay which members the group has; then listen on each member's port."""
        self._group_timer = None
        if self.stopping or self.done:
            return
        d = self.tunnel()
        d.addCallbacks(self._group_asked, self._group_unreachable)
        d.addErrback(lambda f: log.failure("asking for the target group", f))

    def _group_unreachable(self, failure: Failure) -> None:
        self.relay_unreachable(failure)  # told once; fatal ones end the client
        self._group_later()

    def _group_later(self) -> None:
        if not (self.stopping or self.done):
            self._group_timer = self.reactor.callLater(GROUP_RETRY, self._ask_group)

    def _group_asked(self, connection: TunnelConnection) -> None:
        if self.stopping or self.done:
            return
        try:
            stream = connection.open_stream(
                self.options.relay.host,
                method="GET",
                path=GATEWAY_INFO_PATH,
                headers=self.base_headers(),
                end_stream=True,
            )
        except TunnelClosed:
            self._group_later()
            return
        self._group_info = stream
        timer = self.reactor.callLater(GROUP_ANSWER_TIMEOUT, stream.abortConnection)

        def body(data: bytes | None) -> None:
            if timer.active():
                timer.cancel()
            if self._group_info is not stream:
                return
            self._group_info = None
            if data is None:
                self._group_problem(GroupProblem("the relay did not answer in time", retry=True))
                return
            assert self.options.group is not None
            try:
                members = read_members(data, self.options.gateway, self.options.group)
            except GroupProblem as problem:
                self._group_problem(problem)
                return
            self._listen_members(members)

        def refused(failure: Failure) -> None:
            if failure.check(StreamRefused) and self._group_info is stream:
                self._group_info = None
                if timer.active():
                    timer.cancel()
                refused = failure.value
                assert isinstance(refused, StreamRefused)
                retry = refused.token in (Refusal.GATEWAY_OFFLINE.token, "http-503")
                self._group_problem(GroupProblem(str(refused), retry=retry))

        stream.attach(_Body(MAX_GROUP_INFO, body))
        stream.response.addErrback(refused)

    def _group_problem(self, problem: GroupProblem) -> None:
        if self.stopping or self.done:
            return
        if not problem.retry:
            self.fail(problem.line)
            return
        if self._group_told != problem.line:
            self._group_told = problem.line
            self.tell(problem.line)
        self._group_later()

    def _listen_members(self, members: dict[int, str]) -> None:
        """Every member on its own port number at --bind, or one line and exit 1."""
        group = self.options.group
        assert group is not None
        self.members = members
        for port, member in members.items():
            where = self.options.member_address(port)
            factory = quiet_factory(partial(LocalConnection, self, member))
            listener = StreamServerEndpointService(listen_endpoint(self.reactor, where), factory)
            listener._raiseSynchronously = True
            try:
                listener.setServiceParent(self)
            except CannotListenError as e:
                listener.disownServiceParent()
                self.fail(listen_problem(str(where), member, group, e.socketError))
                return
            self.listeners.append(listener)
        first = next(iter(members))
        self.url = f"http://{self.options.member_address(first)}/"
        for port, member in members.items():
            self.tell(
                f"forwarding http://{self.options.member_address(port)}/ -> target {member!r} "
                f"of group {group!r} on gateway {self.options.gateway!r}"
            )
        self.keeper.start()

    # -- what the engineer is told ----------------------------------------------------------------

    def tell(self, line: str) -> None:
        """One line for the engineer; none once we are stopping (our own doing, not news)."""
        if not self.stopping and not self.done:
            self.report(line)

    def relay_unreachable(self, failure: Failure) -> None:
        """A dial failed: fatal (say why, exit 1) or an outage, told once until it is over."""
        if failure.check(CancelledError) or self.stopping:
            return
        if dial_is_fatal(failure):
            relay = self.options.relay
            if type(failure.value).__name__ == "VerificationError":
                name = self.options.server_name or relay.host
                self.fail(
                    f"cannot use relay {relay}: its certificate does not carry the host name "
                    f"{name!r}; check --relay or --server-name"
                )
            else:
                self.fail(
                    f"cannot use relay {relay}: {describe_tls_failure(failure)}; check --ca "
                    "(the CA that signed the relay's certificate)"
                )
            return
        if not self._unreachable_told:
            self._unreachable_told = True
            self.tell(
                f"cannot reach relay {self.options.relay}: {describe_tls_failure(failure)}; "
                "trying again"
            )

    # -- the relay connection ---------------------------------------------------------------------

    def tunnel(self) -> Deferred[TunnelConnection]:
        """The relay connection once HTTP/2 is up: the current one, or one dialled now (one
        attempt shared by everyone who asks meanwhile); fails if that attempt fails."""
        if self.stopping or self.done:
            return fail(TunnelClosed("the client is stopping"))
        current = self.current
        if current is not None and current.is_ready and not current.closed and not current.draining:
            return succeed(current)
        d: Deferred[TunnelConnection] = Deferred()
        self._waiters.append(d)
        if self._connecting is None and self._dialled is None:
            self._dial()
        return d

    def _dial(self) -> None:
        connecting = self._endpoint.connect(self._factory)
        self._connecting = connecting

        def connected(protocol: IProtocol) -> None:
            self._connecting = None
            assert isinstance(protocol, TunnelConnection)
            if not protocol.closed and not protocol.is_ready:
                self._dialled = protocol  # TLS and HTTP/2 settings to come: tunnel_ready/lost

        def failed(failure: Failure) -> None:
            self._connecting = None
            self._dial_failed(failure)

        connecting.addCallbacks(connected, failed)
        connecting.addErrback(lambda f: log.failure("dialling the relay", f))

    def _dial_failed(self, failure: Failure) -> None:
        self.relay_unreachable(failure)
        self._fail_waiters(failure)

    def _fail_waiters(self, failure: Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)

    def _relay_up(self, connection: TunnelConnection) -> None:
        if self._dialled is connection:
            self._dialled = None
        if self.stopping:
            connection.close()
            return
        self.current = connection
        if self._unreachable_told:
            log.info("relay {relay} reached again", relay=self.options.relay)
            self.keeper.relay_returned()
        self._unreachable_told = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(connection)

    def _relay_lost(self, connection: TunnelConnection, reason: Failure) -> None:
        if self._dialled is connection:
            self._dialled = None
        if not connection.is_ready:
            self._dial_failed(reason)  # lost before HTTP/2: the TLS handshake failed, say
            return
        if self.current is connection:
            self.current = None
        if self.stopping or self.done:
            return
        goaway = connection.goaway if isinstance(connection, RelayConnection) else None
        if not self.keeper.wants_relay:
            log.info(
                "relay {relay} closed the connection ({why}); dialled again when needed",
                relay=self.options.relay,
                why=goaway or "no reason given",
            )
            return
        why = f": {goaway}" if goaway and goaway != GOAWAY_IDLE else ""
        self.tell(f"connection to relay {self.options.relay} lost{why}; reconnecting")
        self._unreachable_told = True  # one line per outage: a failing redial says no more

    # -- the session ------------------------------------------------------------------------------

    def base_headers(self) -> list[tuple[bytes, bytes]]:
        """Who we are and where to: on every stream."""
        return [
            (AUTHORIZATION_HEADER, b"Bearer " + self.options.token.encode()),
            (GATEWAY_HEADER, self.options.gateway.encode()),
        ]

    def stream_headers(self) -> list[tuple[bytes, bytes]]:
        """A CONNECT's headers: ours, and the session it belongs to."""
        headers = self.base_headers()
        if self.session is not None:
            headers.append((SESSION_HEADER, self.session.encode("ascii", "replace")))
        return headers

    def admitted(self, session: str | None) -> None:
        """The keeper's word: forward inside ``session`` (None: without one, unattended)."""
        self.session = session
        self.admitted_now = True
        held, self._held = self._held, []
        self._told_holding = False
        for connection in held:
            connection.forward()

    def hold(self) -> None:
        """The keeper's word: new local connections wait (the session is being confirmed)."""
        self.admitted_now = False

    # -- local connections ------------------------------------------------------------------------

    def local_arrived(self, connection: LocalConnection) -> None:
        self._locals.add(connection)
        if self.stopping or self.done:
            connection.close()
        elif self.admitted_now:
            connection.forward()
        elif len(self._held) >= MAX_HELD:
            self.tell(f"{MAX_HELD} connections wait for the plant already; closing another one")
            connection.close()
        else:
            self._held.append(connection)
            if not self._told_holding and self.keeper.phase is Phase.WAITING:
                self._told_holding = True
                self.tell(
                    "a connection to the local port waits until the plant lets you in "
                    "(the page opens then)"
                )

    def local_gone(self, connection: LocalConnection) -> None:
        self._locals.discard(connection)
        if connection in self._held:
            self._held.remove(connection)

    def stream_refused(self, refused: StreamRefused) -> None:
        """A CONNECT refused: the gateway's (or relay's) own words; fatal ones end the client."""
        verdict = refusal_verdict(refused, known_gateway=self.keeper.known_gateway)
        if verdict is Verdict.FATAL:
            self.fail(str(refused))
        elif verdict is Verdict.ENDED and self.keeper.phase is Phase.LIVE:
            return  # the session stream says why it ended, in a moment
        else:
            self.tell(str(refused))


@implementer(IHalfCloseableProtocol)
class _Body(Protocol):
    """A short answer's body, whole (None: cut off, or over ``limit``)."""

    def __init__(self, limit: int, done: Callable[[bytes | None], None]) -> None:
        self._limit, self._done = limit, done
        self._parts: list[bytes] = []
        self._size = 0
        self._over = False

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            self._finish(None)
            return
        self._parts.append(data)

    def readConnectionLost(self) -> None:
        self._finish(b"".join(self._parts))

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._finish(None)

    def _finish(self, body: bytes | None) -> None:
        if not self._over:
            self._over = True
            self._done(body)
