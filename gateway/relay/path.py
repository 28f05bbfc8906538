"""The engineer path's decisions, one named step each: authenticate, authorise, locate.

`EngineerPath.admit` runs them in that order and ends in a verdict: answer the gateway-info
request, or dial the gateway (`Admitted`): a ``CONNECT`` to a target, or a session ask
(``POST SESSION_PATH``) passed through to the gateway.  Any step may refuse with `Refused`.  The
stream handler (`gateway.relay.engineers`) does the stream's side: the refusal or answer, the dial,
the splice.

The relay never creates, approves or checks a session: it only makes sure a ``session`` header is
well formed (short, ``s-`` and URL-safe characters) before it forwards it; whether the session is
live, the gateway's and granted to this engineer is the gateway's decision.

The steps that a shared store will serve (authorisation, the directory) return Deferreds.  The
memory implementations have fired already and a fired Deferred runs its callbacks at once, so a
request still reaches the dial in the reactor turn it arrived in: no ``callLater`` here, ever
(time to first byte is benchmarked).
"""

from __future__ import annotations

import re
import secrets

from attrs import frozen
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from gateway.relay.authorisation import IEngineerAuthorisation
from gateway.relay.credentials import Engineer, ICredentialStore
from gateway.relay.directory import GatewayLocation, IGatewayDirectory, Presence
from gateway.relay.logins import ILoginAttempts, NoLoginLimits
from gateway.relay.metrics import RelayMetrics
from gateway.relay.refusals import Refused, gateway_offline
from gateway.tunnel.stream import StreamRequest
from gateway.wire import (
    AUTHORIZATION_HEADER,
    BEARER,
    GATEWAY_HEADER,
    GATEWAY_INFO_PATH,
    SESSION_HEADER,
    SESSION_PATH,
    GatewayInfo,
    Refusal,
)

# StreamRequest.headers is keyed by decoded names: decode once, not per request.
_AUTHORIZATION = AUTHORIZATION_HEADER.decode("ascii")
_GATEWAY = GATEWAY_HEADER.decode("ascii")
_SESSION = SESSION_HEADER.decode("ascii")

SESSION_ID = re.compile(r"s-[A-Za-z0-9_-]{1,64}")
"""The form of a session id the relay forwards: the gateway's ids are short, ``s-`` and URL-safe
characters.  Anything else is refused here, so the gateway never sees a header it did not make."""


def session_problem(value: str) -> str | None:
    """Why a ``session`` header cannot be forwarded, or None when its form is fine."""
    if SESSION_ID.fullmatch(value):
        return None
    return "the session header is not a session id (s- and up to 64 letters, digits, - or _)"


def new_connection_id() -> str:
    """An id for one engineer connection: short, and random so it says nothing about counts."""
    return "c-" + secrets.token_hex(4)


@frozen
class EngineerRequest:
    """What an engineer's stream asks for, read from its headers once."""

    connection_id: str
    token: str | None
    """The bearer token, or None without a bearer ``authorization`` header."""
    gateway_id: str
    method: str
    path: str
    target: str
    """``:authority``: the target name on the gateway."""
    session: str | None = None
    """The ``session`` header, as sent (checked by `session_problem` before it is forwarded)."""
    peer: str = ""
    """The engineer connection's source address (login limits, log lines)."""

    @classmethod
    def read(cls, request: StreamRequest, connection_id: str, peer: str = "") -> EngineerRequest:
        scheme, _, token = request.headers.get(_AUTHORIZATION, "").partition(" ")
        return cls(
            connection_id=connection_id,
            token=token.strip() if scheme.lower() == BEARER else None,
            gateway_id=request.headers.get(_GATEWAY, ""),
            method=request.method,
            path=request.path,
            target=request.authority,
            session=request.headers.get(_SESSION),
            peer=peer,
        )

    @property
    def wants_gateway_info(self) -> bool:
        return self.method == "GET" and self.path == GATEWAY_INFO_PATH

    @property
    def wants_session(self) -> bool:
        """A session ask (``POST SESSION_PATH``): passed through to the gateway, never decided
        here."""
        return self.method == "POST" and self.path == SESSION_PATH


@frozen
class Admitted:
    """Every step said yes: open a stream to ``target`` on the gateway for ``engineer`` (or, for
    a session ask, pass the ask to the gateway)."""

    request: EngineerRequest
    engineer: Engineer


class EngineerPath:
    def __init__(
        self,
        *,
        credentials: ICredentialStore,
        authorisation: IEngineerAuthorisation,
        directory: IGatewayDirectory,
        metrics: RelayMetrics,
        logins: ILoginAttempts | None = None,
    ) -> None:
        self.credentials = credentials
        self.authorisation = authorisation
        self.directory = directory
        self.metrics = metrics
        self.logins: ILoginAttempts = logins or NoLoginLimits()
        """Failed-login limits per source and engineer (`gateway.relay.logins`)."""

    def admit(self, request: EngineerRequest) -> Deferred[GatewayInfo | Admitted]:
        """Authenticate, authorise, locate; fails with `Refused` at the first step that says no."""
        engineer: Engineer | None = None
        try:
            self.logins.check(request.peer, None)
            engineer = self.authenticate(request)
            self.logins.check(request.peer, engineer)
            self.check_form(request)
        except Refused as refused:
            self.logins.failed(refused, request.peer, request.gateway_id, engineer)
            return fail(refused)
        authorised = self.authorisation.authorise(engineer, request.gateway_id)
        authorised.addErrback(self._login_refused, request, engineer)
        located = authorised.addCallback(lambda _: self.directory.locate(request.gateway_id))
        return located.addCallback(self.decide, request, engineer)

    def _login_refused(
        self, failure: Failure, request: EngineerRequest, engineer: Engineer
    ) -> Failure:
        """Tell the login limits about an authorisation refusal; the refusal goes on."""
        if isinstance(failure.value, Refused):
            self.logins.failed(failure.value, request.peer, request.gateway_id, engineer)
        return failure

    def authenticate(self, request: EngineerRequest) -> Engineer:
        """The engineer the bearer token belongs to (a failure is counted)."""
        engineer = None if request.token is None else self.credentials.authenticate(request.token)
        if engineer is None:
            self.metrics.bad_tokens.inc()
            raise Refused(Refusal.BAD_TOKEN, "the engineer token was not accepted")
        return engineer

    def check_form(self, request: EngineerRequest) -> None:
        """A malformed ``session`` header is refused before anything is looked up."""
        if request.session is not None:
            problem = session_problem(request.session)
            if problem is not None:
                raise Refused(Refusal.BAD_REQUEST, problem)

    def decide(
        self, location: GatewayLocation, request: EngineerRequest, engineer: Engineer
    ) -> GatewayInfo | Admitted:
        """From where the gateway is: the info answer, a refusal, or go ahead and dial."""
        gateway_id = request.gateway_id
        if location.presence is Presence.UNKNOWN:
            raise Refused(
                Refusal.UNKNOWN_GATEWAY,
                f"no gateway named {gateway_id!r} has connected to this relay",
            )
        if request.wants_gateway_info:
            return GatewayInfo(gateway=gateway_id, online=location.online)
        if not location.online:
            raise gateway_offline(gateway_id)
        if request.wants_session:
            return Admitted(request, engineer)
        if request.method != "CONNECT" or not request.target:
            raise Refused(Refusal.BAD_REQUEST, "expected CONNECT to a target name")
        return Admitted(request, engineer)
