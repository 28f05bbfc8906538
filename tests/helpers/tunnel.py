"""Two tunnel connections joined in memory (iosim), driven by one ``task.Clock``."""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from gateway.tunnel.connection import IStreamHandler, TunnelConnection
from gateway.tunnel.stream import TunnelStream


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """Records what a stream delivers."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.read_closed = False
        self.lost: Failure | None = None

    @property
    def received(self) -> bytes:
        return b"".join(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def readConnectionLost(self) -> None:
        self.read_closed = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


@implementer(IStreamHandler)
@define
class AcceptAll:
    """A stream handler that accepts every stream and records it."""

    streams: list[TunnelStream] = field(factory=list)
    recorders: list[Recorder] = field(factory=list)
    accept: bool = True

    def stream_requested(self, stream: TunnelStream) -> None:
        self.streams.append(stream)
        if self.accept:
            recorder = Recorder()
            self.recorders.append(recorder)
            stream.accept()
            stream.attach(recorder)


@define
class Linked:
    clock: Clock
    client: TunnelConnection  # the opener of streams (the relay's role)
    server: TunnelConnection  # the answerer (the gateway's role)
    handler: Any
    pump: IOPump
    client_io: FakeTransport
    server_io: FakeTransport

    def settle(self) -> None:
        self.pump.flush()

    def close(self) -> None:
        for conn in (self.client, self.server):
            if not conn.closed:
                conn.connectionLost(Failure(ConnectionError("test over")))


def linked_tunnels(handler: Any = None, clock: Clock | None = None) -> Linked:
    """An opener (client) and an answerer (server) whose streams go to ``handler``."""
    clock = clock or Clock()
    handler = handler if handler is not None else AcceptAll()
    client = TunnelConnection(client_side=True, clock=clock)
    server = TunnelConnection(client_side=False, clock=clock, handler=handler)
    server_io = FakeTransport(server, isServer=True)
    client_io = FakeTransport(client, isServer=False)
    pump = connect(server, server_io, client, client_io, clock=clock)
    linked = Linked(clock, client, server, handler, pump, client_io, server_io)
    linked.settle()
    return linked


def settle_all(*links: Linked) -> None:
    """Pump several joined pairs until none of them moves a byte."""
    for _ in range(1000):
        moved = False
        for link in links:
            moved = link.pump.flush() or moved
        if not moved:
            return
    raise AssertionError("tunnels never settled")
