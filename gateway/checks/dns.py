"""DNS for the first hop: the relay's name, or the proxy's when one is used (it resolves the
relay's name itself)."""

from __future__ import annotations

import socket
from pathlib import Path

from attrs import frozen
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.python.failure import Failure

from gateway.checks.env import CheckEnv
from gateway.checks.result import DNS, CheckResult, failed, passed


@frozen
class DnsAnswer:
    host: str
    addresses: tuple[str, ...] = ()
    error: str | None = None
    literal: bool = False
    """The host is an IP address: nothing to resolve."""

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.addresses)


def nameservers(resolv_conf: Path) -> list[str]:
    try:
        text = resolv_conf.read_text("utf-8", "replace")
    except OSError:
        return []
    servers = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            servers.append(parts[1])
    return servers


def resolve_first_hop(env: CheckEnv) -> Deferred[DnsAnswer]:
    hop = env.first_hop
    if _is_literal(hop.host):
        return succeed(DnsAnswer(hop.host, (hop.host,), literal=True))
    asked = env.resolve(hop.host, hop.port)
    asked.addTimeout(env.stage_timeout, env.reactor)
    d: Deferred[DnsAnswer] = asked.addCallback(lambda found: DnsAnswer(hop.host, tuple(found)))

    def not_found(failure: Failure) -> DnsAnswer:
        if failure.check(TimeoutError):
            return DnsAnswer(hop.host, error=f"no answer within {env.stage_timeout:g} s")
        if failure.check(socket.gaierror):
            error: socket.gaierror = failure.value  # type: ignore[assignment]
            return DnsAnswer(hop.host, error=error.strerror or str(error))
        return DnsAnswer(hop.host, error=failure.getErrorMessage() or repr(failure.value))

    return d.addErrback(not_found)


def _is_literal(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_dns(env: CheckEnv, answer: DnsAnswer) -> CheckResult:
    hop = env.first_hop
    what = "the proxy's" if env.proxy is not None else "the relay's"
    if answer.literal:
        return passed(DNS, f"{what} address {hop.host} is an IP address: no DNS needed")
    if answer.ok:
        return passed(DNS, f"{hop.host} resolves to {', '.join(answer.addresses)}")
    servers = nameservers(env.resolv_conf)
    via = f"the DNS servers {', '.join(servers)}" if servers else "no DNS server (none configured)"
    detail = f"{hop.host} does not resolve ({answer.error}); this gateway asks {via}"
    if env.proxy is not None:
        remedy = (
            f"ask IT why {hop.host} (the proxy) does not resolve here, or set [relay] proxy to "
            "the proxy's IP address"
        )
    else:
        ask = f"DNS (UDP and TCP 53) to {', '.join(servers)}" if servers else "a DNS server"
        remedy = (
            f"ask IT to let this gateway resolve {hop.host} ({ask}); or set [relay] address to "
            f'the relay\'s IP address and server_name = "{hop.host}"'
        )
    return failed(DNS, detail, remedy)
