"""The relay with proposed fixes applied in-process, to measure them before they land in gateway/.

    python -m bench.scale.run --relay-patch lean-settings --relay-patch backlog=4096
    python -m bench.scale.patched_relay --patch lean-settings relay -c relay.toml

Nothing here changes a file of the product: each patch replaces one thing at import time, the
relay then runs as ``gateway relay`` would.  Patches:

``lean-settings``
    h2 keeps every HTTP/2 setting of both ends in its own ``collections.deque`` (760 bytes for
    one value, ~15 per connection: ~11 KiB per idle tunnel).  A ``list`` subclass with
    ``popleft``/``appendleft`` holds the same values in 64 bytes.
``backlog=N``
    The relay listens with Twisted's default accept backlog of 50; a reconnect storm of
    thousands of gateways overflows it (the kernel drops their handshakes, and they wait for
    SYN-ACK retransmits or the 20 s handshake timeout).  Listen with backlog N instead (the
    kernel caps it at net.core.somaxconn).
``handshake-limit=K``
    Stop accepting gateway connections while K of them are between TCP accept and HTTP/2 ready
    (TLS handshake, SETTINGS); accept again below K.  The kernel's accept queue (see
    ``backlog``) holds the rest, so one reactor turn never has thousands of handshakes to step
    through and an engineer's request is not stuck behind a storm.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class ListQueue(list[Any]):
    """What h2 needs of a deque for its settings: one current value, rarely a pending one."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


def lean_settings() -> None:
    import h2.settings

    h2.settings.collections = types.SimpleNamespace(deque=ListQueue)  # type: ignore[assignment,attr-defined]


def backlog(size: int) -> None:
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

    import gateway.net.endpoints
    import gateway.relay.service
    from gateway.config import Address

    def listen_endpoint(reactor: Any, address: Address, *, backlog: int = 50) -> Any:
        # The product listens with gateway.net.endpoints.RELAY_BACKLOG; this overrides it for A/B.
        kind = TCP6ServerEndpoint if ":" in address.host else TCP4ServerEndpoint
        return kind(reactor, address.port, backlog=size, interface=address.host)

    gateway.net.endpoints.listen_endpoint = listen_endpoint
    gateway.relay.service.listen_endpoint = listen_endpoint  # type: ignore[attr-defined]


def handshake_limit(limit: int) -> None:
    import gateway.relay.service
    from gateway.tunnel.connection import TunnelConnection

    original = gateway.relay.service.RelayDaemon.__init__

    def init(self: Any, config: Any, reactor: Any) -> None:
        original(self, config, reactor)
        listener, factory = self.gateway_listener, self.gateway_factory
        state: dict[str, Any] = {"port": None, "inflight": 0, "paused": False}
        endpoint = listener.endpoint

        class CapturingEndpoint:
            def listen(self, protocol_factory: Any) -> Any:
                d = endpoint.listen(protocol_factory)

                def remember(port: Any) -> Any:
                    state["port"] = port
                    return port

                return d.addCallback(remember)

        listener.endpoint = CapturingEndpoint()
        build = factory.buildProtocol

        def settle() -> None:
            state["inflight"] -= 1
            port = state["port"]
            if state["paused"] and state["inflight"] < limit and port is not None:
                state["paused"] = False
                port.startReading()

        def build_protocol(addr: Any) -> TunnelConnection:
            connection: TunnelConnection = build(addr)
            state["inflight"] += 1
            port = state["port"]
            if state["inflight"] >= limit and not state["paused"] and port is not None:
                state["paused"] = True
                port.stopReading()
            once = {"done": False}

            def done(_: object) -> None:
                if not once["done"]:
                    once["done"] = True
                    settle()

            connection.when_ready().addBoth(done)
            connection.when_lost().addBoth(done)
            return connection

        factory.buildProtocol = build_protocol

    gateway.relay.service.RelayDaemon.__init__ = init  # type: ignore[method-assign]


def apply(patch: str) -> None:
    name, _, value = patch.partition("=")
    if name == "lean-settings":
        lean_settings()
    elif name == "backlog":
        backlog(int(value))
    elif name == "handshake-limit":
        handshake_limit(int(value))
    else:
        raise SystemExit(f"unknown patch {patch!r} (lean-settings, backlog=N, handshake-limit=K)")


def main(argv: list[str]) -> None:
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--patch":
            apply(next(args))
        elif arg.startswith("--patch="):
            apply(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    from gateway.cli import main as gateway_main

    gateway_main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
