"""TCP to the relay: directly, or through the proxy (which then made the connection for us)."""

from __future__ import annotations

from twisted.internet import error as neterror

from gateway.checks.dns import DnsAnswer
from gateway.checks.env import CheckEnv, TunnelState, https_to
from gateway.checks.probe import ProbeReport
from gateway.checks.result import TCP, CheckResult, failed, not_checked, passed
from gateway.net.proxy import ProxyError, ProxyRefusedStatus


def check_tcp(
    env: CheckEnv, dns: DnsAnswer, report: ProbeReport | None, live: TunnelState | None
) -> CheckResult:
    relay, proxy = env.relay, env.proxy
    rule = https_to(relay)
    if live is not None and live.up and report is None:
        return passed(TCP, f"the tunnel to {relay} is up")
    if not dns.ok:
        return not_checked(TCP, f"{dns.host} does not resolve")
    assert report is not None
    failure = report.connect_error
    if failure is None:
        how = f"through the proxy {proxy}" if proxy is not None else "directly"
        return passed(TCP, f"connected to {relay} {how}")
    value = failure.value
    if proxy is not None:
        if isinstance(value, ProxyRefusedStatus) and value.status in (502, 503, 504):
            return failed(
                TCP,
                f"the proxy {proxy} could not reach {relay} ({value.status})",
                f"ask IT to let the proxy make {rule}; if it may, the relay may be down: call "
                "the vendor",
            )
        if isinstance(value, ProxyError):
            return not_checked(TCP, "the proxy did not open a connection to the relay")
    timeout = env.stage_timeout
    if failure.check(neterror.ConnectionRefusedError):
        return failed(
            TCP,
            f"{relay} refused the connection: nothing listens on port {relay.port} there (wrong "
            "port, or the relay is down), or a firewall rejects it",
            f"check [relay] address (the relay's host:port, from the vendor); ask IT to allow "
            f"{rule}; if both are right, the relay is down: call the vendor",
        )
    if failure.check(neterror.TimeoutError, neterror.TCPTimedOutError):
        return failed(
            TCP,
            f"no answer from {relay} within {timeout:g} s: a firewall drops the connection",
            f"ask IT to allow {rule}",
        )
    if failure.check(neterror.NoRouteError):
        return failed(
            TCP, f"no route to {relay.host}", f"see the network check; ask IT to allow {rule}"
        )
    return failed(
        TCP,
        f"cannot connect to {relay}: {failure.getErrorMessage()}",
        f"ask IT to allow {rule}",
    )
