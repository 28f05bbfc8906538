# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""Socket options for tunnel and processor connections (`gateway.net.sockets`)."""

from __future__ import annotations

import socket

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.net.sockets import (
    LOCAL_RECEIVE_BUFFER,
    SOCKET_READ_SIZE,
    UNSENT_LOW_WATER,
    limit_receive_buffer,
    limit_unsent,
    tune_socket,
)


class TCPTransport(StringTransport):
    """The parts of a TCP transport that the tuning touches, recorded."""

    def __init__(self, handle: socket.socket | None = None) -> None:
        super().__init__()
        self.bufferSize = 65536
        self.no_delay = self.keepalive = False
        self._handle = handle

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keepalive = enabled

    def getHandle(self) -> socket.socket | None:
        return self._handle


class TuneSocketTests(SynchronousTestCase):
    def test_tcp_reads_a_mebibyte_at_a_time_without_nagle(self) -> None:
        transport = TCPTransport()
        tune_socket(transport)
        self.assertEqual(transport.bufferSize, SOCKET_READ_SIZE)
        self.assertTrue(transport.no_delay)
        self.assertFalse(transport.keepalive)

    def test_tunnel_sockets_also_keep_alive(self) -> None:
        transport = TCPTransport()
        tune_socket(transport, keepalive=True)
        self.assertTrue(transport.keepalive)

    def test_a_transport_that_is_not_tcp_is_left_alone(self) -> None:
        transport = StringTransport()
        tune_socket(transport, keepalive=True)
        self.assertFalse(hasattr(transport, "bufferSize"))


class LimitUnsentTests(SynchronousTestCase):
    def test_kernel_holds_little_unsent_data(self) -> None:
        # The gateway runs on Linux, which has had the option since 3.12: without it the tunnel's
        # short queues are lost, so its absence fails rather than skips.
        option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
        assert option is not None, "this platform has no TCP_NOTSENT_LOWAT"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        limit_unsent(TCPTransport(sock))
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, option), UNSENT_LOW_WATER)

    def test_a_transport_without_a_socket_is_left_alone(self) -> None:
        limit_unsent(StringTransport())  # no getHandle: nothing to set, nothing raised


class LimitReceiveBufferTests(SynchronousTestCase):
    def test_a_local_connection_gets_a_short_receive_buffer(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        limit_receive_buffer(TCPTransport(sock))
        # Linux reports twice what was set (its bookkeeping overhead); autotuning is then off.
        self.assertEqual(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), 2 * LOCAL_RECEIVE_BUFFER
        )

    def test_a_transport_without_a_socket_is_left_alone(self) -> None:
        limit_receive_buffer(StringTransport())
        limit_receive_buffer(TCPTransport(None))  # a handle that is not a socket
