"""The portal's logic: log in, what an engineer may see, opening streams and session asks.

The portal is one more way in for an engineer, beside ``gateway connect``, and goes through the
same steps: the engineer's entry in ``engineers.toml`` (name, password, gateway patterns,
expiry), the authorisation, the stream limits, the dialer.  It decides nothing for the plant:
the gateway checks mode, session, target and permission on every stream, and alone answers a
session ask.  The engineer's identity on the tunnel is the name the relay knows, the same as
their token's, so a session the plant approved is theirs in the portal and in the client alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from attrs import define, field
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.audit import AuditWriteError, IAuditTrail
from gateway.relay.admission import EngineerAdmission
from gateway.relay.authorisation import PatternAuthorisation
from gateway.relay.credentials import Engineer, TokenFile
from gateway.relay.dialer import IGatewayDialer
from gateway.relay.edgeinfo import INFO_TIMEOUT, EdgeOffer, ask_edge_info
from gateway.relay.gateways import GatewayTunnels
from gateway.relay.logins import LoginGuard
from gateway.relay.metrics import RelayMetrics
from gateway.relay.path import new_connection_id
from gateway.relay.portal.logins import Login, PortalLogins
from gateway.relay.portal.passwords import verify_password
from gateway.relay.portal.totp import CodeCheck
from gateway.relay.refusals import Refused
from gateway.relay.revocation import LiveStreams
from gateway.tunnel.stream import StreamResponse, TunnelStream
from gateway.wire import Refusal, SessionEvent, SessionEventKind, StreamRefused

log = Logger()


@define
class GatewayCard:
    """One gateway as the portal shows it to an engineer."""

    id: str
    online: bool
    mode: str | None = None
    targets: list[str] = field(factory=list)
    problem: str | None = None
    groups: dict[str, dict[str, str]] = field(factory=dict)
    """Target groups: ``{group: {"port": member}}``, the first member the group's page."""


@define(eq=False)
class PortalAsk:
    """The engineer's session ask to one gateway, held open by the portal (their presence)."""

    engineer: str
    gateway: str
    way: str
    reason: str = ""
    state: str = "asking"
    """asking, waiting, approved, denied, ended."""
    session: str | None = None
    expires: str | None = None
    targets: list[str] = field(factory=list)
    permission: str | None = None
    why: str | None = None
    stream: TunnelStream | None = None

    def view(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in attrs.asdict(self, recurse=False).items()
            if k not in ("stream", "engineer")
        }


class Portal:
    """Everything the portal's pages and its proxy ask; built by `gateway.relay.portal.service`."""

    def __init__(
        self,
        *,
        domain: str,
        port: int,
        clock: IReactorTime,
        credentials: TokenFile,
        authorisation: PatternAuthorisation,
        tunnels: GatewayTunnels,
        dialer: IGatewayDialer,
        metrics: RelayMetrics,
        logins: LoginGuard,
        audit: IAuditTrail,
        live: LiveStreams,
        admission: EngineerAdmission | None,
        login_seconds: float,
        check_password: Callable[[str, str | None], Deferred[bool]] | None = None,
    ) -> None:
        self.domain = domain
        self.port = port
        self.clock = clock
        self.credentials = credentials
        self.authorisation = authorisation
        self.tunnels = tunnels
        self.dialer = dialer
        self.metrics = metrics
        self.login_limits = logins
        self.audit = audit
        self.live = live
        self.admission = admission
        self.logins = PortalLogins(clock, login_seconds)
        self._check_password = check_password or (
            lambda password, stored: deferToThread(verify_password, password, stored)
        )
        self.password_failures = metrics.auth_failures.labels(kind="portal_password")
        self.totp_failures = metrics.auth_failures.labels(kind="portal_totp")
        self.codes = CodeCheck(clock)
        self.asks: dict[tuple[str, str], PortalAsk] = {}
        self.pages: dict[tuple[str, str], set[Any]] = {}
        self._expiries: dict[Any, IDelayedCall] = {}
        self.groups: dict[str, dict[str, dict[str, str]]] = {}
        """Each gateway's target groups as it last reported them (`_card`)."""
        """The proxied connections open per (engineer, gateway): ended with its session."""

    # -- origins ---------------------------------------------------------------------------------

    def portal_origin(self) -> str:
        return self._origin(self.domain)

    def target_url(self, target: str, gateway: str) -> str:
        return self._origin(f"{target}--{gateway}.{self.domain}")

    def _origin(self, host: str) -> str:
        return f"https://{host}/" if self.port == 443 else f"https://{host}:{self.port}/"

    # -- logging in ------------------------------------------------------------------------------

    def log_in(self, name: str, password: str, peer: str, code: str = "") -> Deferred[Login]:
        """A login, or `Refused` (wrong name, password or second-factor code, locked out);
        failures are counted.  ``code``: the TOTP code, for an engineer who enrolled one."""
        try:
            self.login_limits.check(peer, None)
        except Refused as refused:
            d: Deferred[Login] = Deferred()
            d.errback(refused)
            return d
        entry = self.credentials.entry(name) if self.credentials.problem is None else None
        stored = None if entry is None else entry.password
        checked = self._check_password(password, stored)

        def decided(ok: bool) -> Login:
            if not ok or entry is None:
                self.password_failures.inc()
                refused = Refused(Refusal.BAD_TOKEN, "wrong engineer name or password")
                self.login_limits.failed(refused, peer, "", None)
                raise refused
            if entry.totp is not None and not self.codes.check(entry.name, entry.totp, code):
                self.totp_failures.inc()
                refused = Refused(
                    Refusal.BAD_TOKEN,
                    "the second-factor code is missing or wrong (the 6 digits your "
                    "authenticator app shows now)",
                )
                self.login_limits.failed(refused, peer, "", None)
                raise refused
            login = self.logins.create(entry.name)
            self._record("engineer.portal_login", entry.name, peer=peer)
            log.info("portal: {engineer} logged in from {peer}", engineer=entry.name, peer=peer)
            return login

        return checked.addCallback(decided)

    def log_out(self, login: Login) -> None:
        """The login ends, and with it every page it opened (their connections are cut)."""
        self.logins.end(login.id)
        self._record("engineer.portal_logout", login.engineer)
        for pages in self.pages.values():
            for page in [p for p in pages if getattr(p, "login", None) is login]:
                pages.discard(page)
                page.end("you logged out of the portal")
        if not self.logins.logins_of(login.engineer):
            for key in [k for k in self.asks if k[0] == login.engineer.casefold()]:
                self.leave(login, key[1])

    def engineer(self, login: Login) -> Engineer | None:
        entry = self.credentials.entry(login.engineer)
        return None if entry is None else entry.engineer()

    # -- what they may see -----------------------------------------------------------------------

    def gateways(self, login: Login) -> Deferred[list[GatewayCard]]:
        engineer = self.engineer(login)
        if engineer is None:
            return succeed([])
        live = self.tunnels.live()
        wanted = [gid for gid in sorted(live) if self.authorisation.refusal(engineer, gid) is None]
        cards = [self._card(gid) for gid in wanted]
        return gatherResults(cards, consumeErrors=True)

    def refresh(self, gateway_id: str) -> Deferred[GatewayCard]:
        """Ask the gateway what it offers now (its mode, targets and groups)."""
        return self._card(gateway_id)

    def _card(self, gateway_id: str) -> Deferred[GatewayCard]:
        asked = ask_edge_info(self.tunnels, gateway_id, self.clock, INFO_TIMEOUT)

        def card(offer: EdgeOffer) -> GatewayCard:
            if offer.problem is None and offer.online:
                self.groups[gateway_id] = offer.groups
            return GatewayCard(
                gateway_id,
                online=offer.online,
                mode=offer.mode,
                targets=offer.targets,
                problem=offer.problem,
                groups=offer.groups,
            )

        return asked.addCallback(card)

    # -- streams for the proxy -------------------------------------------------------------------

    def login_for_pass(self, token: str | None, gateway: str, target: str) -> Login | None:
        return self.logins.by_pass(token, gateway, target)

    def redeem(self, ticket: str, gateway: str, target: str) -> str | None:
        return self.logins.redeem(ticket, gateway, target)

    def resolve(self, gateway: str, name: str, port: int) -> str:
        """The target a browser means on ``port`` of ``name``'s host: the target itself on the
        portal's own port; for a target group, its member with that port number (its page on
        the portal's own port).  Raises `Refused` for anything else."""
        group = self.groups.get(gateway, {}).get(name)
        if group is None:
            if port in (0, self.port):
                return name
            raise Refused(
                Refusal.BAD_REQUEST, f"{name!r} is served on port {self.port} only (not a group)"
            )
        if port in (0, self.port):
            return next(iter(group.values()))
        member = group.get(str(port))
        if member is None:
            raise Refused(Refusal.BAD_REQUEST, f"group {name!r} has no member on port {port}")
        return member

    def open_stream(
        self, login: Login, gateway: str, target: str, peer: str, port: int = 0
    ) -> TunnelStream:
        """A CONNECT to ``target`` (or the group member ``port`` names) as the login's
        engineer, in their session there if any."""
        target = self.resolve(gateway, target, port)
        engineer = self.engineer(login)
        if engineer is None:
            raise Refused(Refusal.BAD_TOKEN, "your engineer access was removed on the relay")
        refused = self.authorisation.refusal(engineer, gateway)
        if refused is not None:
            raise refused
        if self.admission is not None:
            refused = self.admission.before_dial(gateway, target)
            if refused is not None:
                raise refused
        ask = self.asks.get((login.engineer.casefold(), gateway))
        if ask is not None and ask.state == "ended":
            raise Refused(
                Refusal.SESSION_ENDED,
                f"your session on gateway {gateway!r} ended ({ask.why or 'no reason given'}); "
                "open the portal to ask for a new one",
            )
        session = ask.session if ask is not None and ask.state == "approved" else None
        cid = new_connection_id()
        stream = self.dialer.dial(gateway, engineer, target, cid, session=session)
        self.live.opened(stream, engineer, gateway)
        log.info(
            "portal: {engineer} opens {target} on gateway {gw} (connection {cid})",
            engineer=engineer.name,
            target=target,
            gw=gateway,
            cid=cid,
        )
        return stream

    def page_opened(self, engineer: str, gateway: str, page: Any) -> None:
        """A proxied connection opened; it is cut when its login expires (a WebSocket would
        otherwise outlive the login)."""
        self.pages.setdefault((engineer.casefold(), gateway), set()).add(page)
        login = getattr(page, "login", None)
        if isinstance(login, Login):
            delay = max(0.0, login.expires - self.clock.seconds())
            self._expiries[page] = self.clock.callLater(
                delay, self._login_expired, engineer, gateway, page
            )

    def page_closed(self, engineer: str, gateway: str, page: Any) -> None:
        self.pages.get((engineer.casefold(), gateway), set()).discard(page)
        timer = self._expiries.pop(page, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _login_expired(self, engineer: str, gateway: str, page: Any) -> None:
        self._expiries.pop(page, None)
        self.pages.get((engineer.casefold(), gateway), set()).discard(page)
        page.end("your portal login expired")

    def _end_pages(self, engineer: str, gateway: str, why: str) -> None:
        for page in list(self.pages.pop((engineer.casefold(), gateway), set())):
            page.end(why)

    # -- sessions --------------------------------------------------------------------------------

    def ask(
        self, login: Login, gateway: str, *, reason: str | None = None, code: str | None = None
    ) -> PortalAsk:
        """Ask the gateway for a session (a reason, a code, or neither in unattended mode)."""
        engineer = self.engineer(login)
        if engineer is None:
            raise Refused(Refusal.BAD_TOKEN, "your engineer access was removed on the relay")
        refused = self.authorisation.refusal(engineer, gateway)
        if refused is not None:
            raise refused
        key = (login.engineer.casefold(), gateway)
        old = self.asks.get(key)
        if old is not None and old.state in ("asking", "waiting", "approved"):
            return old
        way = "code" if code else "reason" if reason else "unattended"
        ask = PortalAsk(login.engineer, gateway, way, reason=reason or "")
        stream = self.dialer.ask_session(gateway, engineer, new_connection_id())
        ask.stream = stream
        self.asks[key] = ask
        self.live.opened(stream, engineer, gateway)
        details: dict[str, Any] = {"way": way, "gateway": gateway, "via": "portal"}
        if reason:
            details["reason"] = reason[:1000]
        self._record("session.requested", login.engineer, **details)
        body: dict[str, Any] = {}
        if reason:
            body["reason"] = reason[:1000]
        if code:
            body["code"] = code
        stream.write(json.dumps(body).encode())
        stream.loseWriteConnection()
        stream.attach(_Events(lambda event: self._event(ask, event), lambda: self._gone(ask)))
        stream.response.addCallbacks(
            lambda response: self._ask_answered(ask, response),
            lambda failure: self._ask_refused(ask, failure),
        )
        return ask

    def leave(self, login: Login, gateway: str) -> None:
        """The engineer ends their part: the ask stream closes, the gateway's grace runs."""
        ask = self.asks.pop((login.engineer.casefold(), gateway), None)
        if ask is not None:
            stream, ask.stream = ask.stream, None
            self._ended(ask, "the engineer let go of it in the portal")
            if stream is not None and not stream.finished:
                stream.loseConnection()
        self._end_pages(login.engineer, gateway, "you ended the session")

    def forget_finished(self, login: Login, gateway: str) -> None:
        """An Open after a session ended or was denied starts afresh (unattended mode lets
        the engineer straight in again; attended mode asks for a new request)."""
        key = (login.engineer.casefold(), gateway)
        ask = self.asks.get(key)
        if ask is not None and ask.state in ("ended", "denied"):
            del self.asks[key]

    def ask_of(self, login: Login, gateway: str) -> PortalAsk | None:
        return self.asks.get((login.engineer.casefold(), gateway))

    def _ask_answered(self, ask: PortalAsk, response: StreamResponse) -> None:
        if ask.state == "asking":
            ask.state = "waiting"

    def _ask_refused(self, ask: PortalAsk, failure: Failure) -> None:
        ask.state = "denied"
        if failure.check(StreamRefused):
            refused = failure.value
            assert isinstance(refused, StreamRefused)
            ask.why = refused.reason
            self._record(
                "session.denied",
                ask.engineer,
                result="refused",
                refusal=refused.token,
                reason=refused.reason,
                gateway=ask.gateway,
                via="portal",
            )
        else:
            ask.why = failure.getErrorMessage()

    def _event(self, ask: PortalAsk, event: SessionEvent) -> None:
        kind = event.event
        where = {"gateway": ask.gateway, "via": "portal"}
        if kind is SessionEventKind.WAITING:
            ask.state = "waiting"
            ask.expires = event.expires
        elif kind in (SessionEventKind.APPROVED, SessionEventKind.CHANGED):
            if kind is SessionEventKind.APPROVED and ask.state != "approved":
                self.metrics.sessions_active.inc()
                fields = {
                    k: v
                    for k, v in attrs.asdict(event, recurse=False).items()
                    if k in ("session", "targets", "permission", "expires", "approved_by") and v
                }
                self._record("session.started", ask.engineer, **fields, **where)
            ask.state = "approved"
            ask.session = event.session or ask.session
            ask.expires = event.expires
            ask.targets = list(event.targets)
            ask.permission = event.permission
        elif kind is SessionEventKind.DENIED:
            ask.state = "denied"
            ask.why = event.reason
            self._record(
                "session.denied", ask.engineer, result="denied", reason=event.reason or "", **where
            )
        elif kind is SessionEventKind.ENDED:
            self._ended(ask, event.why or "the session ended")

    def _ended(self, ask: PortalAsk, why: str) -> None:
        was_live = ask.state == "approved"
        ask.state = "ended"
        ask.why = why
        if was_live:
            self.metrics.sessions_active.dec()
            self._record(
                "session.ended",
                ask.engineer,
                session=ask.session or "",
                why=why,
                gateway=ask.gateway,
                via="portal",
            )
        self._end_pages(ask.engineer, ask.gateway, why)

    def _gone(self, ask: PortalAsk) -> None:
        if ask.state in ("asking", "waiting", "approved"):
            self._ended(ask, ask.why or "the gateway closed the session")

    def _record(self, event: str, who: str, *, result: str = "ok", **details: Any) -> None:
        try:
            self.audit.record(event, who=who, result=result, **details)
        except AuditWriteError as e:
            log.error("audit: cannot record {event}: {error}", event=event, error=str(e))


@implementer(IHalfCloseableProtocol)
class _Events(Protocol):
    """Session event lines from the gateway."""

    def __init__(self, event: Callable[[SessionEvent], None], gone: Callable[[], None]) -> None:
        self._event, self._gone, self._partial = event, gone, b""

    def dataReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > 64 * 1024:
            self._partial = b""
        for line in lines:
            if not line.strip():
                continue
            try:
                event = SessionEvent.from_line(line)
            except (ValueError, TypeError):
                continue
            self._event(event)

    def readConnectionLost(self) -> None:
        pass

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._gone()
