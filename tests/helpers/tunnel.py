"""Two tunnel connections joined in memory (iosim), driven by one ``task.Clock``."""

from __future__ import annotations

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
    handler: AcceptAll
    pump: IOPump
    client_io: FakeTransport
    server_io: FakeTransport

    def settle(self) -> None:
        self.pump.flush()

    def close(self) -> None:
        for conn in (self.client, self.server):
            if not conn.closed:
                conn.connectionLost(Failure(ConnectionError("test over")))


def linked_tunnels(handler: AcceptAll | None = None) -> Linked:
    clock = Clock()
    handler = handler or AcceptAll()
    client = TunnelConnection(client_side=True, clock=clock)
    server = TunnelConnection(client_side=False, clock=clock, handler=handler)
    server_io = FakeTransport(server, isServer=True)
    client_io = FakeTransport(client, isServer=False)
    pump = connect(server, server_io, client, client_io, clock=clock)
    linked = Linked(clock, client, server, handler, pump, client_io, server_io)
    linked.settle()
    return linked
