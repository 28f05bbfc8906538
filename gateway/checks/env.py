"""What the checks are given: the configuration, the reactor, and seams for what the world says.

Everything a check asks the outside world goes through here, so tests hand in fakes: name
resolution (``getaddrinfo`` in a thread, never on the reactor), the interface table (netifaces),
the resolver configuration, and what a running daemon knows about its own tunnel.  The CLI and
the daemon build one each; the checks themselves hold no state.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import define, frozen
from cryptography import x509
from twisted.internet.defer import Deferred

from gateway.config import Address, GatewayConfig
from gateway.net.proxy import proxy_for

Resolve = Callable[[str, int], "Deferred[list[str]]"]
"""``(host, port)`` -> the addresses it resolves to (errback with ``socket.gaierror``)."""


@frozen
class TLSFacts:
    """What one TLS handshake with the relay showed."""

    version: str | None
    alpn: bytes | None
    chain: tuple[x509.Certificate, ...]
    """As presented, the relay's own certificate first."""
    relay_time: int | None
    """The relay's clock from its ServerHello random (`gateway.tls.options`)."""
    local_time: float | None
    """This gateway's clock when the ServerHello arrived (or the connection was made)."""


@frozen
class TunnelState:
    """The tunnel as the running daemon sees it (its own state, or its status JSON)."""

    state: str
    since: str | None
    rtt_ms: float | None
    last_error: str | None
    via: str
    """Who told: "this daemon" or "the running daemon (status at ...)"."""
    tls: TLSFacts | None = None
    """The live connection's handshake (only inside the daemon, while up)."""

    @property
    def up(self) -> bool:
        return self.state == "up"


def thread_resolve(reactor: Any) -> Resolve:
    """``getaddrinfo`` in a thread of its own: it can take many seconds and must never block the
    reactor.  A daemon thread, not the reactor's pool, so that a resolver that hangs for longer
    than the check waits cannot hold up the command's exit either."""

    def lookup(host: str, port: int) -> list[str]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        seen: list[str] = []
        for *_, sockaddr in infos:
            if sockaddr[0] not in seen:
                seen.append(str(sockaddr[0]))
        return seen

    def resolve(host: str, port: int) -> Deferred[list[str]]:
        d: Deferred[list[str]] = Deferred()

        def deliver(result: list[str] | Exception) -> None:
            if d.called:  # the check stopped waiting
                return
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(result)

        def work() -> None:
            result: list[str] | Exception
            try:
                result = lookup(host, port)
            except Exception as e:
                result = e
            reactor.callFromThread(deliver, result)

        threading.Thread(target=work, name=f"resolve {host}", daemon=True).start()
        return d

    return resolve


def read_netifaces() -> Any:
    import netifaces

    return netifaces


@define
class CheckEnv:
    config: GatewayConfig
    reactor: Any
    """IReactorTCP + IReactorTime (+ a thread pool for the default resolver)."""
    resolve: Resolve
    netifaces: Callable[[], Any] = read_netifaces
    resolv_conf: Path = Path("/etc/resolv.conf")
    tunnel_state: Callable[[], TunnelState | None] | None = None
    """The daemon's view of its tunnel; None: no daemon runs (the CLI dials a fresh tunnel)."""
    fresh_tunnel: bool = False
    """May the probe speak HTTP/2 as this gateway?  Only when no daemon holds the tunnel: the
    relay keeps one tunnel per gateway, and a second one would replace the daemon's."""
    probe_budget: float = 12.0
    """Seconds the relay probe may take in all (DNS, TCP, proxy, TLS, HTTP/2)."""
    stage_timeout: float = 5.0
    """Seconds for each step of the probe (and each target)."""

    @property
    def relay(self) -> Address:
        return self.config.relay.address

    @property
    def proxy(self) -> Address | None:
        return proxy_for(self.config.relay)

    @property
    def first_hop(self) -> Address:
        """Where the gateway's own TCP connection goes: the proxy if one is used, else the relay."""
        return self.proxy or self.relay

    def now(self) -> float:
        return float(self.reactor.seconds())


def https_to(address: Address) -> str:
    """How plant IT writes a firewall rule: ``outbound TCP 443 to relay.example.com (HTTPS)``."""
    return f"outbound TCP {address.port} to {address.host} (HTTPS)"
