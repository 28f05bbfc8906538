"""The tunnel's TLS record path: Twisted's ``TLSMemoryBIOProtocol`` with fewer Python calls.

Twisted's ``TLSMemoryBIOProtocol`` moves data in 16 KiB records, one Python call per record in
each direction.  Measured on the tunnel prototype, reading the socket in 1 MiB chunks, handing all
records decrypted from one read to the protocol in a single call and writing through OpenSSL without
slicing copies cut the receive cost by a third (TUNNEL-NOTES.md).  ``FastTLSProtocol`` does that.

It does so by overriding private methods of ``TLSMemoryBIOProtocol`` and reading its private
attributes, which Twisted may change in any release.  ``unsupported_hooks`` checks, once at
import, that everything relied on is still there with the same shape; if not, one warning is
logged and ``FastTLSFactory`` uses ``TunedTLSProtocol`` (Twisted's own record path: correct,
slower) rather than a subclass that would break on the first connection.
"""

from __future__ import annotations

import inspect
from typing import Any

import twisted
from OpenSSL import SSL
from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet import interfaces
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from gateway.net.queues import QueueSizer
from gateway.net.sockets import limit_unsent, tune_socket
from gateway.net.tcpinfo import set_congestion_control, socket_of, system_congestion_control

log = Logger()

RECORD_READ = 1 << 15
"""Plaintext asked of OpenSSL per call: it returns one record (at most 16 KiB) per call anyway,
and pyOpenSSL allocates the whole requested size every time."""
BIO_CHUNK = 256 * 1024


def _tune_openssl(connection: SSL.Connection) -> None:
    """Whole writes, and no buffers held by idle connections.

    pyOpenSSL turns on SSL_MODE_ENABLE_PARTIAL_WRITE, which makes each SSL_write stop after one
    16 KiB record: 64 Python round trips (and error checks) per MiB.  Writing into a memory BIO
    never blocks, so whole writes are safe here (the relay's profile: 66,710 calls per GiB down
    to ~1,200).  SSL_MODE_RELEASE_BUFFERS returns OpenSSL's ~34 KiB of record buffers while a
    connection is idle, which is what thousands of gateways on one relay are most of the time.
    """
    try:
        from OpenSSL._util import lib

        lib.SSL_clear_mode(connection._ssl, lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
        lib.SSL_set_mode(connection._ssl, lib.SSL_MODE_RELEASE_BUFFERS)
    except (ImportError, AttributeError):  # a pyOpenSSL without these bindings: defaults
        pass


class TunedTLSProtocol(TLSMemoryBIOProtocol):
    """Twisted's record path on a tuned socket; only public methods are overridden.

    The fallback when ``FastTLSProtocol``'s hooks are gone: the socket options (keepalive finds a
    dead uplink, no Nagle delay, little unsent data in the kernel) do not depend on Twisted's
    internals, so they are kept.
    """

    queue_sizer: QueueSizer | None = None

    def makeConnection(self, transport: interfaces.ITransport) -> None:
        tune_socket(transport, keepalive=True)
        limit_unsent(transport)
        congestion = getattr(self.factory, "congestion_control", None)
        if congestion:
            _choose_congestion_control(self.factory, transport, congestion)
        clock = getattr(self.factory, "_clock", None)
        if clock is not None and hasattr(transport, "bufferSize"):
            # The tunnel above finds it here (``TunnelConnection.connectionMade``) and follows
            # its frame size; a protocol wrapper in between (Twisted's ClientService adds one)
            # would swallow anything set on it from below.
            self.queue_sizer = QueueSizer(transport, clock.seconds)
        super().makeConnection(transport)
        _tune_openssl(self.getHandle())

    def write(self, data: bytes) -> None:
        if self.queue_sizer is not None:
            self.queue_sizer.writing()
        super().write(data)


def _choose_congestion_control(factory: Any, transport: Any, name: str) -> None:
    """Ask for ``name`` on the tunnel's socket; say once per factory if it cannot be had."""
    sock = socket_of(transport)
    if sock is None:
        return
    problem = set_congestion_control(sock, name)
    if problem is None or getattr(factory, "_congestion_warned", False):
        return
    factory._congestion_warned = True
    log.warn(
        "tunnel congestion control: {problem}; using the system's ({system}). On a slow "
        "uplink a download then fills the modem's queue and clicks wait behind it; see the "
        "README's 'Slow uplinks'",
        problem=problem,
        system=system_congestion_control(),
    )


class FastTLSProtocol(TunedTLSProtocol):
    """``TLSMemoryBIOProtocol`` with large reads, batched delivery and copy-free writes."""

    def _flushSendBIO(self) -> None:
        # Everything one write produced, in as few reads as possible (a 1 MiB write makes
        # ~64 records); each read allocates its buffer, so the chunk is bounded.
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(self._tlsConnection.bio_read(BIO_CHUNK))
            except WantReadError:
                break
        if chunks:
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))  # type: ignore[union-attr]

    def _flushReceiveBIO(self) -> None:
        # Same error handling as Twisted's, but every record decrypted from this read is handed
        # to the protocol in one dataReceived call, so HTTP/2 parses one large buffer.
        received: list[bytes] = []
        while not self._lostTLSConnection:
            try:
                received.append(self._tlsConnection.recv(RECORD_READ))
            except WantReadError:
                break
            except ZeroReturnError:
                self._deliver(received)
                received = []
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._deliver(received)
                received = []
                self._tlsShutdownFinished(Failure())
        self._deliver(received)
        self._flushSendBIO()

    def _deliver(self, received: list[bytes]) -> None:
        if received and not self._aborted:
            data = received[0] if len(received) == 1 else b"".join(received)
            ProtocolWrapper.dataReceived(self, data)

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        view = memoryview(data)
        sent_total = 0
        while sent_total < len(view):
            try:
                sent = self._tlsConnection.send(view[sent_total:])
            except WantReadError:
                self._bufferedWrite(bytes(view[sent_total:]))
                break
            except Error:
                self._tlsShutdownFinished(Failure())
                return
            sent_total += sent
        self._flushSendBIO()


OVERRIDDEN = {"_flushSendBIO": 1, "_flushReceiveBIO": 1, "_write": 2}
"""Base methods ``FastTLSProtocol`` replaces, with their parameter count (``self`` included)."""

CALLED = {"_shutdownTLS": 1, "_tlsShutdownFinished": 2, "_bufferedWrite": 2}
"""Base methods ``FastTLSProtocol`` calls, with their parameter count."""

FLAGS = ("_lostTLSConnection", "_aborted")
"""Class-level defaults of the base's state flags that ``FastTLSProtocol`` reads."""

USED_BY = {
    "makeConnection": ("_tlsConnection",),
    "write": ("_write",),
    "dataReceived": ("_flushReceiveBIO",),
    "_checkHandshakeStatus": ("_flushSendBIO",),
    "_unbufferPendingWrites": ("_write",),
}
"""Base methods that must still set or call these names, or the overrides would be dead code
(or ``_tlsConnection``, an instance attribute, would never be set)."""


def unsupported_hooks(base: type) -> list[str]:
    """What ``FastTLSProtocol`` relies on that ``base`` no longer has in the same shape."""
    name = base.__name__
    problems: list[str] = []
    for method, arity in {**OVERRIDDEN, **CALLED}.items():
        function = getattr(base, method, None)
        if not callable(function):
            problems.append(f"{name}.{method} is gone")
            continue
        try:
            params = len(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            continue  # no signature to compare (a builtin): the name is all we can check
        if params != arity:
            problems.append(f"{name}.{method} takes {params} parameters, not {arity}")
    problems += [f"{name}.{flag} is gone" for flag in FLAGS if not hasattr(base, flag)]
    for method, names in USED_BY.items():
        code = getattr(getattr(base, method, None), "__code__", None)
        for used in names:
            if code is None or used not in code.co_names:
                problems.append(f"{name}.{method} no longer uses {used}")
    return problems


def choose_protocol(base: type = TLSMemoryBIOProtocol) -> type[TunedTLSProtocol]:
    """``FastTLSProtocol`` if ``base`` still has its hooks, else ``TunedTLSProtocol`` (warned)."""
    problems = unsupported_hooks(base)
    if not problems:
        return FastTLSProtocol
    log.warn(
        "Twisted {version} changed what the fast TLS path relies on ({problems}); using "
        "Twisted's own TLS record path instead (correct, slower)",
        version=twisted.__version__,
        problems="; ".join(problems),
    )
    return TunedTLSProtocol


class FastTLSFactory(TLSMemoryBIOFactory):
    """Wraps each connection in the TLS protocol ``choose_protocol`` picked at import.

    ``congestion_control``: the TCP congestion control to ask for on each connection's socket
    (e.g. ``bbr``; None: the system's).
    """

    protocol = choose_protocol()
    congestion_control: str | None = None
    _congestion_warned = False
