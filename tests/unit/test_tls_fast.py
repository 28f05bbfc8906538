# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The fast TLS record path and its guard against Twisted changes.

``FastTLSProtocol`` overrides private methods of Twisted's ``TLSMemoryBIOProtocol``.  The guard
must pass on the Twisted we ship with (an upgrade that moves those internals fails here first),
must pick Twisted's own record path when they are gone, and both paths must carry data intact.
"""

from __future__ import annotations

import socket
from typing import Any

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from gateway.net.endpoints import quiet_factory
from gateway.net.queues import FRAME_FLOOR, WRITE_FLOOR, sizes_for
from gateway.net.tcpinfo import congestion_control_of
from gateway.tls.fast import (
    FastTLSFactory,
    FastTLSProtocol,
    TunedTLSProtocol,
    choose_protocol,
    unsupported_hooks,
)
from tests.unit.test_tls import Loopback, WithPKI


def twisted_where(missing: str | None = None, **replaced: Any) -> type:
    """A stand-in for a future ``TLSMemoryBIOProtocol``: today's, minus or with other methods."""
    namespace: dict[str, Any] = {}
    for klass in reversed(TLSMemoryBIOProtocol.__mro__):
        namespace.update({k: v for k, v in vars(klass).items() if not k.startswith("__")})
    if missing is not None:
        del namespace[missing]
    namespace.update(replaced)
    return type("TLSMemoryBIOProtocol", (), namespace)


class GuardTests(WithPKI):
    def test_installed_twisted_has_every_hook_the_fast_path_uses(self) -> None:
        self.assertEqual(unsupported_hooks(TLSMemoryBIOProtocol), [])
        self.assertIs(FastTLSFactory.protocol, FastTLSProtocol)

    def test_the_stand_in_for_todays_twisted_passes_too(self) -> None:
        self.assertEqual(unsupported_hooks(twisted_where()), [])

    def test_a_missing_hook_selects_twisteds_record_path_with_one_warning(self) -> None:
        with capturedLogs() as events:
            chosen = choose_protocol(twisted_where(missing="_write"))
        self.assertIs(chosen, TunedTLSProtocol)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        text = formatEvent(events[0])
        self.assertIn("TLSMemoryBIOProtocol._write is gone", text)
        self.assertIn("Twisted's own TLS record path", text)

    def test_a_missing_state_flag_is_noticed(self) -> None:
        self.assertEqual(
            unsupported_hooks(twisted_where(missing="_lostTLSConnection")),
            ["TLSMemoryBIOProtocol._lostTLSConnection is gone"],
        )

    def test_a_hook_with_another_signature_is_noticed(self) -> None:
        def _write(self: object, data: bytes, flush: bool) -> None:
            pass

        self.assertEqual(
            unsupported_hooks(twisted_where(_write=_write)),
            ["TLSMemoryBIOProtocol._write takes 3 parameters, not 2"],
        )
        self.assertIs(choose_protocol(twisted_where(_write=_write)), TunedTLSProtocol)

    def test_a_hook_no_longer_called_is_noticed(self) -> None:
        def write(self: Any, data: bytes) -> None:
            self._encrypt(data)

        self.assertEqual(
            unsupported_hooks(twisted_where(write=write)),
            ["TLSMemoryBIOProtocol.write no longer uses _write"],
        )

    def test_the_connection_attribute_must_still_be_set(self) -> None:
        def makeConnection(self: Any, transport: object) -> None:
            self._connection = transport

        self.assertEqual(
            unsupported_hooks(twisted_where(makeConnection=makeConnection)),
            ["TLSMemoryBIOProtocol.makeConnection no longer uses _tlsConnection"],
        )


class TunedFactory(TLSMemoryBIOFactory):
    protocol = TunedTLSProtocol


class RecordPathTests(WithPKI):
    """Both record paths, over a real handshake: what goes in comes out, and closes cleanly."""

    def link(self, factory: type[TLSMemoryBIOFactory]) -> Loopback:
        relay = self.relay(client_ca=self.pki.ca_cert)
        link = Loopback(relay, self.gateway(), factory=factory)
        link.pump.flush()
        self.assertIsNone(link.client_app.reason)
        return link

    def check_both_ways(self, factory: type[TLSMemoryBIOFactory], protocol: type) -> None:
        link = self.link(factory)
        self.assertIs(type(link.client_tls), protocol)
        up = bytes(range(256)) * 4096 + b"end"  # 1 MiB and a bit: ~65 records
        down = b"x" * 100_000
        link.client_app.transport.write(up)  # type: ignore[union-attr]
        link.server_app.transport.write(down)  # type: ignore[union-attr]
        link.client_app.transport.write(b"!")  # type: ignore[union-attr]
        link.pump.flush()
        self.assertEqual(link.server_app.received, up + b"!")
        self.assertEqual(link.client_app.received, down)

        link.client_app.transport.loseConnection()  # type: ignore[union-attr]
        link.pump.flush()
        assert link.client_app.reason is not None and link.server_app.reason is not None
        link.client_app.reason.trap(ConnectionDone)
        link.server_app.reason.trap(ConnectionDone)

    def test_fast_path_carries_large_writes_both_ways_and_closes_cleanly(self) -> None:
        self.check_both_ways(FastTLSFactory, FastTLSProtocol)

    def test_fallback_path_carries_large_writes_both_ways_and_closes_cleanly(self) -> None:
        self.check_both_ways(TunedFactory, TunedTLSProtocol)

    def test_writes_before_the_handshake_are_delivered_after_it(self) -> None:
        link = Loopback(self.relay(), self.gateway(with_cert=False))
        link.client_app.transport.write(b"early " * 10_000)  # type: ignore[union-attr]
        link.pump.flush()
        self.assertEqual(link.server_app.received, b"early " * 10_000)

    def test_openssl_writes_whole_buffers_and_releases_idle_buffers(self) -> None:
        from OpenSSL._util import lib

        link = self.link(FastTLSFactory)
        connection: SSL.Connection = link.client_tls.getHandle()
        mode = lib.SSL_set_mode(connection._ssl, 0)  # adds nothing, returns the mode
        self.assertEqual(mode & lib.SSL_MODE_ENABLE_PARTIAL_WRITE, 0)
        self.assertEqual(mode & lib.SSL_MODE_RELEASE_BUFFERS, lib.SSL_MODE_RELEASE_BUFFERS)


class SocketTCPTransport(StringTransport):
    """A TCP transport as the TLS layer sees it: a real socket behind ``getHandle``."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.bufferSize = 65536
        self._sock = sock

    def getHandle(self) -> socket.socket:
        return self._sock


class FramedApp(Protocol):
    """Stands for ``TunnelConnection``: has the ``frame_limit`` the sizer sets."""

    frame_limit = 1 << 20


class PathTuningTests(WithPKI):
    """The tunnel's socket gets its congestion control and a queue sizer at connect."""

    def connect(self, factory: FastTLSFactory) -> tuple[Any, socket.socket]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(SocketTCPTransport(sock))
        return protocol, sock

    def factory(self, congestion: str | None) -> FastTLSFactory:
        factory = FastTLSFactory(self.gateway(), True, quiet_factory(FramedApp), clock=Clock())
        factory.congestion_control = congestion
        return factory

    def test_the_configured_congestion_control_is_set_on_the_tunnels_socket(self) -> None:
        _protocol, sock = self.connect(self.factory("reno"))
        self.assertEqual(congestion_control_of(sock), "reno")

    def test_one_warning_per_listener_when_the_kernel_lacks_it(self) -> None:
        factory = self.factory("nonesuch")
        with capturedLogs() as events:
            for _ in range(3):
                self.connect(factory)
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("does not offer 'nonesuch'", warnings[0])
        self.assertIn("using the system's", warnings[0])

    def test_the_sizer_tells_whoever_writes_through_it_its_frame_size(self) -> None:
        protocol, _sock = self.connect(self.factory(None))
        sizer = protocol.queue_sizer
        self.assertIsNotNone(sizer)
        frames: list[int] = []
        sizer.on_frame_size = frames.append
        sizer.resize(sizes_for(2e6 / 8))
        self.assertEqual(frames, [FRAME_FLOOR])
        self.assertEqual(protocol.transport.bufferSize, WRITE_FLOOR)
