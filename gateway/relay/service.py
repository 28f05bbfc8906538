"""``gateway relay``: the vendor relay's service tree.  ``makeService`` starts nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway.audit import IAuditTrail
from gateway.auditlog.writer import open_daemon_trail
from gateway.config import RelayConfig
from gateway.logsafe import RateLimitedLog
from gateway.net.endpoints import RELAY_BACKLOG, listen_endpoint
from gateway.reactor import IGatewayReactor
from gateway.relay.admission import (
    ConnectionGuard,
    ConnectionLimits,
    EngineerAdmission,
    EngineerConnection,
    GuardedTLSEndpoint,
    StreamLimits,
)
from gateway.relay.asks import SessionAsks
from gateway.relay.authorisation import PatternAuthorisation
from gateway.relay.control import RelayControlSocket
from gateway.relay.credentials import TokenFile
from gateway.relay.desk import SupportDesk
from gateway.relay.dialer import LocalDialer
from gateway.relay.directory import MemoryGatewayDirectory
from gateway.relay.edgeinfo import ask_edge_info
from gateway.relay.engineers import EngineerStreams
from gateway.relay.enrollment import EnrollmentDesk, choose_protocol
from gateway.relay.gateways import GatewayPeer, GatewayTunnels
from gateway.relay.lastused import LastUsed, last_used_path
from gateway.relay.logins import LoginGuard
from gateway.relay.metrics import RelayMetrics
from gateway.relay.path import EngineerPath
from gateway.relay.reload import RelayReloader, RelayReloadOutcome, SwappableOptions
from gateway.relay.revocation import AccessWatch, LiveStreams
from gateway.relay.revoked import RevocationWatch
from gateway.tls import load_ca, server_options
from gateway.tunnel.batch import WriteBatch
from gateway.tunnel.connection import TunnelConnection


class TrackingFactory(Factory):
    noisy = False
    """Builds tunnel connections and remembers the live ones, so shutdown can drain them."""

    def __init__(self, build: Callable[[object], TunnelConnection]) -> None:
        self._build = build
        self.live: set[TunnelConnection] = set()

    def buildProtocol(self, addr: object) -> TunnelConnection:
        connection = self._build(addr)
        self.live.add(connection)
        connection.when_lost().addCallback(lambda _: self.live.discard(connection))
        return connection


class RelayDaemon(MultiService):
    def __init__(self, config: RelayConfig, reactor: IGatewayReactor) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        # The audit trail first: an unwritable state directory stops start-up in one line, and
        # everything built below may record through it.
        self.audit_file = open_daemon_trail(
            config.state_dir, config_file=config.path, clock=reactor
        )
        self.audit: IAuditTrail = self.audit_file
        # Where gateways are, who engineers are and what they may ask: behind interfaces, so a
        # store shared by several relays can take the memory and file versions' place.
        self.directory = MemoryGatewayDirectory(reactor)
        # engineers.toml must be private to the relay's user (else: refuse to start); when
        # last used is kept apart (never by rewriting the credentials).
        self.credentials = TokenFile(config.engineers.tokens, private=True)
        self.last_used = LastUsed(last_used_path(config.state_dir), reactor)
        self.authorisation = PatternAuthorisation(
            self.credentials, reactor, on_authorised=self.last_used.touch
        )
        # The live tunnels of the gateways connected to this process: local by nature.
        self.tunnels = GatewayTunnels()
        self.metrics = RelayMetrics(CollectorRegistry(), reactor)
        heartbeat = config.gateways.heartbeat
        metrics = self.metrics
        self._watch_engineer_access()
        self._guard_connections()
        handoff = self._enrollment()
        # One batch for both listeners: an engineer's bytes reach the gateway's tunnel in the
        # same reactor turn as they arrived (gateway.tunnel.batch).
        batch = WriteBatch()

        def gateway_tunnel(addr: object) -> TunnelConnection:
            return TunnelConnection(
                client_side=True,
                clock=reactor,
                observer=GatewayPeer(
                    self.tunnels,
                    self.directory,
                    metrics,
                    address=addr,
                    guard=self.gateway_guard,
                    audit=self.audit,
                    lines=self.lines,
                    revoked=self.revocations.why_revoked,
                ),
                heartbeat_interval=heartbeat.interval,
                heartbeat_timeout=heartbeat.timeout,
                ready_timeout=heartbeat.interval + heartbeat.timeout,
                batch=batch,
                lines=self.lines,
                handoff=handoff,
            )

        dialer = LocalDialer(self.tunnels)
        self.engineer_streams = EngineerStreams(
            path=EngineerPath(
                credentials=self.credentials,
                authorisation=self.authorisation,
                directory=self.directory,
                metrics=metrics,
                logins=self.logins,
            ),
            dialer=dialer,
            metrics=metrics,
            clock=reactor,
            # Session asks go through to the gateway, which alone decides; the relay audits them.
            asks=SessionAsks(dialer=dialer, metrics=metrics, audit=self.audit, clock=reactor),
            live=self.live_engineers,
            admission=self.engineer_admission,
            half_close_timeout=config.half_close_timeout,
            # gateway connect --group learns the gateway's target groups from the info answer.
            edge_info=lambda gateway_id: ask_edge_info(self.tunnels, gateway_id, reactor),
        )

        def engineer_connection(addr: object) -> TunnelConnection:
            return TunnelConnection(
                client_side=False,
                clock=reactor,
                handler=self.engineer_streams,
                observer=EngineerConnection(addr),
                heartbeat_interval=heartbeat.interval,
                heartbeat_timeout=heartbeat.timeout,
                ready_timeout=heartbeat.interval + heartbeat.timeout,
                batch=batch,
                lines=self.lines,
            )

        self.gateway_factory = TrackingFactory(gateway_tunnel)
        self.engineer_factory = TrackingFactory(engineer_connection)
        # The control socket first: a second relay on this state directory stops here, before
        # it listens.  It serves the support desk's view (gateway relay sessions).
        self.desk = SupportDesk(self.tunnels, self.directory, reactor)
        self.control_socket = RelayControlSocket(reactor, config.state_dir, self.desk)
        self.control_socket.setServiceParent(self)
        gw = config.gateways
        eng = config.engineers
        # Swappable: a SIGHUP's new certificates serve every handshake from then on.
        enrolling = config.enrollment is not None
        self.gateway_tls = SwappableOptions(
            server_options(gw.cert, gw.key, client_ca=gw.ca, enrollment=enrolling)
        )
        self.engineer_tls = SwappableOptions(server_options(eng.cert, eng.key, client_ca=None))
        gateway_tls = cast(CertificateOptions, self.gateway_tls)
        engineer_tls = cast(CertificateOptions, self.engineer_tls)
        # Each accepted connection meets its listener's guard before any TLS work.
        self.gateway_listener = StreamServerEndpointService(
            GuardedTLSEndpoint(
                listen_endpoint(reactor, gw.listen, backlog=RELAY_BACKLOG),
                gateway_tls,
                reactor,
                self.gateway_guard,
                congestion_control=gw.congestion_control,
            ),
            self.gateway_factory,
        )
        self.gateway_listener.setServiceParent(self)
        self.engineer_listener = StreamServerEndpointService(
            GuardedTLSEndpoint(
                listen_endpoint(reactor, eng.listen, backlog=RELAY_BACKLOG),
                engineer_tls,
                reactor,
                self.engineer_guard,
                congestion_control=eng.congestion_control,
            ),
            self.engineer_factory,
        )
        self.engineer_listener.setServiceParent(self)
        if config.portal is not None:
            self._start_portal(config, dialer)
        if config.metrics_listen is not None:
            root = Resource()
            root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
            StreamServerEndpointService(
                listen_endpoint(reactor, config.metrics_listen), Site(root)
            ).setServiceParent(self)
        self.reloader = RelayReloader(
            config=config,
            gateway_tls=self.gateway_tls,
            engineer_tls=self.engineer_tls,
            recheck_engineers=self.access_watch.check,
            audit=self.audit,
            clock=reactor,
            registry=metrics.registry,
        )

    def reload(self) -> RelayReloadOutcome:
        """Read relay.toml, engineers.toml and the certificates again (``SIGHUP``)."""
        return self.reloader.reload()

    def _start_portal(self, config: RelayConfig, dialer: LocalDialer) -> None:
        """The engineers' portal in the browser (``[portal]``, `gateway.relay.portal`)."""
        from gateway.relay.portal.core import Portal
        from gateway.relay.portal.service import portal_service

        portal = config.portal
        assert portal is not None
        self.portal = Portal(
            domain=portal.domain,
            port=portal.listen.port,
            clock=self._reactor,
            credentials=self.credentials,
            authorisation=self.authorisation,
            tunnels=self.tunnels,
            dialer=dialer,
            metrics=self.metrics,
            logins=self.logins,
            audit=self.audit,
            live=self.live_engineers,
            admission=self.engineer_admission,
            login_seconds=portal.login_minutes * 60.0,
        )
        portal_service(portal, self.portal, self._reactor).setServiceParent(self)

    def _watch_engineer_access(self) -> None:
        """Failed-login limits, and the watch that ends streams whose access was withdrawn
        (removed, expired, or every engineer while engineers.toml is unusable)."""
        self.logins = LoginGuard(
            self.config.engineers.logins, self._reactor, self.metrics, self.audit
        )
        self.live_engineers = LiveStreams()
        self.access_watch = AccessWatch(
            self.credentials,
            self.authorisation,
            self.live_engineers,
            self._reactor,
            self.metrics,
            audit=self.audit,
            last_used=self.last_used,
        )
        self.access_watch.setServiceParent(self)

    def _enrollment(self) -> object:
        """Revocations (always watched) and, with ``[enrollment]``, the enrollment desk on the
        gateway listener; the tunnel's ``handoff`` for it, or None."""
        from gateway._files import private_file_problem
        from gateway.enrollment.revocations import Revocations
        from gateway.enrollment.tokens import TokenStore
        from gateway.tls import TLSFileError

        config, reactor = self.config, self._reactor
        self.revocations = Revocations(config.state_dir)
        RevocationWatch(
            self.revocations, self.tunnels, reactor, self.metrics, audit=self.audit
        ).setServiceParent(self)
        settings = config.enrollment
        if settings is not None:
            problem = private_file_problem(settings.ca_key, "gateway CA key")
            if problem is not None:
                raise TLSFileError(problem)
        from gateway.pki import PKIError

        try:
            self.enrollment = EnrollmentDesk(
                settings,
                tokens=TokenStore(config.state_dir, reactor.seconds),
                revocations=self.revocations,
                clock=reactor,
                metrics=self.metrics,
                audit=self.audit,
            )
        except PKIError as e:
            raise TLSFileError(f"[enrollment]: {e}") from None
        if settings is None:
            return None
        signer = self.enrollment.signer
        assert signer is not None
        trusted = load_ca(config.gateways.ca).original.to_cryptography()
        if signer.ca != trusted:
            raise TLSFileError(
                f"{settings.ca_cert}: [enrollment] ca_cert is not the CA in [gateways] ca "
                f"({config.gateways.ca}): gateways it enrolled could not open their tunnel"
            )
        return choose_protocol(self.enrollment, reactor, self.metrics, self.lines)

    def _guard_connections(self) -> None:
        """Per-source connection limits, the engineers' token deadline and idle timeout, stream
        limits per connection and per tunnel (`gateway.relay.admission`), and one rate limit
        for the log lines that anyone who reaches a listener can cause (`gateway.logsafe`)."""
        reactor, metrics = self._reactor, self.metrics
        self.lines = RateLimitedLog(reactor)
        eng, gw = self.config.engineers.limits, self.config.gateways.limits
        self.engineer_guard = ConnectionGuard(
            "engineer",
            ConnectionLimits(
                max_per_source=eng.max_connections_per_source,
                max_unauthenticated_per_source=eng.max_unauthenticated_per_source,
                max_unauthenticated=eng.max_unauthenticated,
                auth_timeout=eng.auth_timeout,
                idle_timeout=eng.idle_timeout,
            ),
            clock=reactor,
            metrics=metrics,
            lines=self.lines,
        )
        self.gateway_guard = ConnectionGuard(
            "gateway",
            ConnectionLimits(max_unauthenticated_per_source=gw.max_unauthenticated_per_source),
            clock=reactor,
            metrics=metrics,
            lines=self.lines,
        )
        self.engineer_admission = EngineerAdmission(
            guard=self.engineer_guard,
            limits=StreamLimits(
                per_connection=eng.max_streams_per_connection,
                per_tunnel=gw.max_streams_per_tunnel,
            ),
            tunnel_streams=self.tunnels.streams,
        )

    def stopService(self) -> Deferred[None]:
        """Stop listening, let open streams finish (bounded), then close every tunnel."""
        stopped = super().stopService()
        drains = [
            c.drain(self.config.drain_timeout)
            for factory in (self.engineer_factory, self.gateway_factory)
            for c in list(factory.live)
        ]
        done: Deferred[None] = DeferredList([stopped, *drains]).addCallback(lambda _: None)
        done.addBoth(self._close_audit)  # after the drains: closing streams still record
        done.addBoth(self._stop_lines)
        return done

    def _stop_lines(self, result: object) -> object:
        self.lines.stop()  # pending "N similar lines suppressed" written, no timer left
        return result

    def _close_audit(self, result: object) -> object:
        self.audit_file.close()
        return result


def makeService(config: RelayConfig, reactor: IGatewayReactor) -> RelayDaemon:
    return RelayDaemon(config, reactor)
