"""``gateway run``: compose the edge daemon's services.  ``makeService`` starts nothing.

The parts meet here and nowhere else: the link, the forwarder and the consent service report to
one ``FanOut`` of events, whose consumers are the metrics, the status model (tunnel state machine
and live connections), the consent service (which connections each session has) and the audit
trail's stream records; the status page reads a ``StatusView``.  ``daemon.consent`` is the plant's
control (`IConsent`) that the control socket, the JSON API and the tunnel's session route call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web.resource import Resource

from gateway.audit import IAuditTrail
from gateway.auditlog.writer import open_daemon_trail
from gateway.checks.daemon import attach_checks
from gateway.config import GatewayConfig
from gateway.edge.access import AccessPolicy
from gateway.edge.control import ControlRoutes, info_route, session_route, sessions_route
from gateway.edge.dispatch import StreamDispatcher
from gateway.edge.events import FanOut, StreamAudit
from gateway.edge.forwarder import StreamForwarder, tcp_connector
from gateway.edge.limits import StreamLimiter
from gateway.edge.link import GatewayTunnelService, TunnelObserver, TunnelStatus, relay_endpoint
from gateway.edge.metrics import GatewayMetrics
from gateway.edge.recent import RecentAudit
from gateway.edge.reload import ConfigReloader, ListenerKind, ReloadOutcome, fingerprints
from gateway.edge.requestaudit import RequestAudit
from gateway.edge.sessions import ConsentService, starting_mode
from gateway.edge.state import StateDirectory
from gateway.edge.status import LiveConnections, StatusView
from gateway.net.endpoints import quiet_factory
from gateway.net.queues import PathReport, path_report
from gateway.net.unixsocket import UnixSocketService
from gateway.reactor import IGatewayReactor
from gateway.tls import load_identity
from gateway.tunnel.batch import WriteBatch
from gateway.tunnel.connection import TunnelConnection
from gateway.web.api import (
    CONTROL_SOCKET,
    api_root,
    api_site,
    control_socket_user,
)
from gateway.web.events import EventStream
from gateway.web.page import page_root
from gateway.web.pageauth import PageAuth
from gateway.web.pagetls import page_tls_options
from gateway.web.site import local_listener
from gateway.web.status import status_root

log = Logger()


class EdgeDaemon(MultiService):
    """The gateway daemon's service tree, with the pieces tests and the status page reach for."""

    def __init__(self, config: GatewayConfig, reactor: IGatewayReactor) -> None:
        super().__init__()
        self.config = config
        # The state directory before anything is kept in it: created 0700, or refused in one
        # line if others could write it (they could switch remote access on).
        self.state = StateDirectory.open(config.state_dir, config.path)
        # The audit trail first: an unwritable state directory stops start-up in one line, and
        # everything built below may record through it.
        self.audit_file = open_daemon_trail(
            config.state_dir, config_file=config.path, clock=reactor
        )
        # The status page's "Recent events": a copy of the last records, seeded from the trail.
        self.recent = RecentAudit(self.audit_file, reactor)
        self.recent.seed(config.state_dir)
        self.audit: IAuditTrail = self.recent
        link = config.relay
        relay = str(link.address)
        identity = load_identity(link.cert, link.key)  # fails early on an unreadable pair
        self.gateway_id = _common_name(identity.original.to_cryptography())
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, reactor)
        self.metrics.set_certificate(link.cert.read_bytes())
        self.tunnel_status = TunnelStatus(relay, reactor)
        self.connections = LiveConnections()
        # Every event goes to every consumer (the consent service and the audit trail's stream
        # records join below, once they exist).
        self.events = FanOut(self.metrics, self.tunnel_status, self.connections)
        mode = starting_mode(self.state, config.access_mode)  # the plant's last choice wins
        self.policy = AccessPolicy(
            config.targets, mode, on_mode_change=self.events.access_mode_changed
        )
        self.metrics.show_mode(mode)
        self.forwarder = StreamForwarder(
            policy=self.policy,
            connect=tcp_connector(reactor),
            clock=reactor,
            events=self.events,
            counter=self.events,
            half_close_timeout=config.half_close_timeout,
            limits=StreamLimiter(config.limits, reactor),
        )
        # The plant's control: one service behind the control socket, the JSON API and the
        # tunnel's session route; the access decision asks it about every stream's session.
        self.consent = ConsentService(
            policy=self.policy,
            state=self.state,
            audit=self.audit,
            clock=reactor,
            events=self.events,
            rules=config.consent,
            streams=self.forwarder,
        )
        self.policy.sessions = self.consent
        self.events.add(self.consent)  # which connections each session has
        self.events.add(StreamAudit(self.consent.auditor, reactor))
        # Every request on an http target's streams: audited (bounded per session), summed up
        # at the session's end, and its last few shown in the status JSON.
        self.request_audit = RequestAudit(self.consent.auditor, reactor)
        self.events.add(self.request_audit)
        self.forwarder.requests = self.events  # the audit and gateway_http_requests_total
        self.control = ControlRoutes(
            [
                info_route(
                    self.gateway_id,
                    self.policy,
                    lambda: len(self.forwarder.active),
                    groups={
                        g.name: {str(port): m for port, m in g.by_port(config.targets).items()}
                        for g in config.target_groups
                    },
                ),
                session_route(self.consent),
                sessions_route(self.gateway_id, self.consent),
            ]
        )
        self.dispatcher = StreamDispatcher(self.forwarder, self.control)
        self.observer = TunnelObserver(relay, self.events)
        self.metrics.watch_path(self._tunnel_path)
        self.view = StatusView(
            self.gateway_id,
            self.tunnel_status,
            self.policy,
            self.connections,
            self.consent,
            recent_requests=self.request_audit.recent,
            recent_events=self.recent.recent,
        )
        # Connectivity checks: at start, on a schedule, after tunnel failures and on demand; their
        # results in the status report and gateway_check_ok (gateway.checks.daemon).
        self.checks = attach_checks(self, reactor)
        self.batch = batch = WriteBatch()  # one per daemon, shared by its tunnel connections

        def make_tunnel() -> TunnelConnection:
            now = self.tunnel.link  # a reload's heartbeat and timeouts: from the next connection
            return TunnelConnection(
                client_side=False,
                clock=reactor,
                handler=self.dispatcher,
                observer=self.observer,
                heartbeat_interval=now.heartbeat.interval,
                heartbeat_timeout=now.heartbeat.timeout,
                ready_timeout=now.connect_timeout + now.heartbeat.timeout,
                batch=batch,
            )

        self.tunnel_factory = quiet_factory(make_tunnel)
        self.tunnel = GatewayTunnelService(
            link=link,
            reactor=reactor,
            endpoint=relay_endpoint(link, reactor),
            make_protocol=self.tunnel_factory,
            observer=self.observer,
            drain_timeout=config.drain_timeout,
        )
        # Local listeners first: a port already in use stops start-up before anything dials out.
        # The control socket first: a second daemon on this state directory stops here.
        self.control_socket = control_socket(self, reactor)
        self.control_socket.setServiceParent(self)
        # Both web listeners under the rules of gateway.web.site (deadlines, body and connection
        # limits, Host allowlist, security headers), with a warning if others can reach them.
        # The page acts for loopback callers, and for others once they logged in with the
        # operator password (gateway.web.pageauth).
        self._reactor = reactor
        self.page_auth = PageAuth(config.state_dir, reactor, self.audit)
        self.page_events: EventStream | None = None
        self.listeners: dict[ListenerKind, StreamServerEndpointService] = {}
        for kind in ("status", "metrics"):
            listener = self._listener(kind, config)
            if listener is not None:
                listener.setServiceParent(self)
                self.listeners[kind] = listener
        self.tunnel.setServiceParent(self)
        self._renew_certificate(reactor)
        # After the tunnel, so it stops first: engineers hear why before the tunnel drains.
        self.consent.setServiceParent(self)
        # SIGHUP: gateway.toml again, applied without dropping the tunnel (gateway.edge.reload).
        self.reloader = ConfigReloader(self, reactor, self.registry)

    def reload(self) -> ReloadOutcome:
        """Read gateway.toml again and apply it (``SIGHUP``); a broken file changes nothing."""
        return self.reloader.reload()

    def use_identity(self, cert: Path, key: Path) -> None:
        """Present a new certificate and key from the next tunnel connection on, without dropping
        the one that is up (renewal); the expiry metric follows.  Raises
        `gateway.tls.TLSFileError` for a pair that cannot be used (nothing changes then)."""
        self.tunnel.use_identity(cert, key)
        self.metrics.set_certificate(cert.read_bytes())
        self.reloader.files = fingerprints(self.tunnel.link)

    def _listener(
        self, kind: ListenerKind, config: GatewayConfig
    ) -> StreamServerEndpointService | None:
        """The ``[status]`` or ``[metrics]`` listener ``config`` asks for (None: none)."""
        address = config.status_listen if kind == "status" else config.metrics_listen
        if address is None:
            return None
        if kind == "status":
            page, self.page_events = page_root(
                self.view, self.consent, self.page_auth, self._reactor
            )
            return local_listener(
                self._reactor,
                "status",
                address,
                page,
                config.status_allowed_hosts,
                tls=page_tls_options(config),
                login=True,
            )
        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry=self.registry))
        return local_listener(self._reactor, "metrics", address, root, config.metrics_allowed_hosts)

    def rebind(self, kind: ListenerKind, config: GatewayConfig, *, hosts_only: bool) -> str | None:
        """Move the ``kind`` listener to ``config``'s address: the new one is bound before the
        old one closes, and if it cannot be, the old one stays (the problem is returned and
        logged).  ``hosts_only``: the same address, new ``allowed_hosts`` for new connections."""
        old = self.listeners.get(kind)
        old_events = self.page_events
        new = self._listener(kind, config)
        if hosts_only and old is not None and new is not None:
            cast(Any, old.factory).rules = cast(Any, new.factory).rules
            self.page_events = old_events  # the old page keeps serving
            return None
        if new is not None:
            new._raiseSynchronously = True
            try:
                new.setServiceParent(self)
            except CannotListenError as e:
                self.removeService(new)
                self.page_events = old_events
                problem = (
                    f"{config.path}: {kind}.listen: cannot listen on "
                    f"{e.interface or '*'}:{e.port} ({e.socketError}); still on the old address"
                )
                log.error("{problem}", problem=problem)
                return problem
            self.listeners[kind] = new
        else:
            self.listeners.pop(kind, None)
        if old is not None:
            old.disownServiceParent()
        if kind == "status" and old_events is not None and old_events is not self.page_events:
            old_events.stop()  # the moved page's live readers reconnect to the new address
        return None

    def _renew_certificate(self, reactor: IGatewayReactor) -> None:
        """At two thirds of its life the certificate is renewed through the relay, and the
        tunnel dials with the new one from its next connection (`gateway.edge.renewal`)."""
        from gateway.edge.renewal import CertificateRenewal

        def renewed(pem: bytes) -> None:
            # The renewal replaced the files the link names: present them from the next dial.
            link = self.tunnel.link
            self.use_identity(link.cert, link.key)

        self.renewal = CertificateRenewal(
            self.config.relay, reactor, self.registry, renewed=renewed
        )
        self.renewal.setServiceParent(self)

    def _tunnel_path(self) -> PathReport | None:
        """The path of the tunnel that is up now, for the metrics (None while it is down)."""
        current = self.observer.current
        return path_report(current.transport) if current is not None else None

    def stopService(self) -> Deferred[None]:
        """Stop everything, then flush and close the audit trail (records made while streams
        drain still reach it)."""
        events = getattr(self, "page_events", None)
        if events is not None:
            events.stop()  # live pages' streams would hold the listener's shutdown
        stopped: Deferred[None] = super().stopService()
        stopped.addBoth(self._close_audit)
        return stopped

    def _close_audit(self, result: object) -> object:
        self.audit_file.close()
        return result


def control_socket(daemon: EdgeDaemon, reactor: IGatewayReactor) -> UnixSocketService:
    """``STATE_DIR/control.sock``: the JSON API for the control commands (the actor is the Unix
    user who connected; the socket's mode 0660 decided who may)."""
    view, consent = daemon.view, daemon.consent
    return UnixSocketService(
        reactor,
        daemon.config.state_dir / CONTROL_SOCKET,
        api_site(status_root(view, api_root(view, consent, control_socket_user))),
        in_use="another gateway daemon is running with this state directory",
    )


def _common_name(certificate: x509.Certificate) -> str:
    """Who we are: the subject's common name (the relay checks it against the id rule)."""
    value = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value.decode() if isinstance(value, bytes) else value


def makeService(config: GatewayConfig, reactor: IGatewayReactor) -> EdgeDaemon:
    return EdgeDaemon(config, reactor)
