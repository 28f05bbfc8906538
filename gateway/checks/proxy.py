"""The plant proxy: reachable, CONNECT to the relay allowed, credentials accepted.

Read from the relay probe's first step (the probe dials through the proxy as the tunnel does),
or from the live tunnel: a tunnel that is up through the proxy proves all three.
"""

from __future__ import annotations

from gateway.checks.dns import DnsAnswer
from gateway.checks.env import CheckEnv, TunnelState
from gateway.checks.probe import ProbeReport
from gateway.checks.result import PROXY, CheckResult, failed, not_checked, passed
from gateway.net.proxy import (
    ProxyAuthRequired,
    ProxyError,
    ProxyForbidden,
    ProxyNotHTTP,
    ProxyRefusedStatus,
    ProxyTimeout,
    ProxyUnreachable,
)

UPSTREAM_FAILURES = frozenset({502, 503, 504})
"""The proxy answered CONNECT but could not reach the relay itself: the TCP check's to explain."""


def check_proxy(
    env: CheckEnv, dns: DnsAnswer, report: ProbeReport | None, live: TunnelState | None
) -> CheckResult:
    link = env.config.relay
    proxy, relay = env.proxy, env.relay
    if proxy is None:
        if link.proxy is not None:
            return passed(PROXY, f"no_proxy lists {relay.host}: the relay is dialled directly")
        return passed(PROXY, "no proxy configured: the relay is dialled directly")
    as_user = f" as user {link.proxy_credentials.user!r}" if link.proxy_credentials else ""
    if live is not None and live.up and report is None:
        return passed(PROXY, f"the tunnel is up through the proxy {proxy}{as_user}")
    if not dns.ok:
        return not_checked(PROXY, f"the proxy's name {proxy.host} does not resolve")
    assert report is not None
    error = report.connect_error.value if report.connect_error is not None else None
    if error is None:
        return passed(PROXY, f"the proxy {proxy} allows CONNECT to {relay}{as_user}")
    rule = f"HTTPS (CONNECT) to {relay.host} port {relay.port} through the proxy {proxy}"
    if isinstance(error, ProxyUnreachable) or (
        isinstance(error, ProxyTimeout) and "cannot reach" in str(error)
    ):
        return failed(
            PROXY,
            str(error),
            f"check [relay] proxy (the plant proxy's host:port); ask IT to allow outbound TCP "
            f"{proxy.port} to {proxy.host} from this gateway",
        )
    if isinstance(error, ProxyTimeout):
        return failed(
            PROXY,
            str(error),
            f"ask IT whether {proxy} is an HTTP proxy, and to allow {rule} for this gateway",
        )
    if isinstance(error, ProxyNotHTTP):
        return failed(
            PROXY,
            str(error),
            f"check [relay] proxy: {proxy} is not an HTTP proxy (a SOCKS or HTTPS port?); ask "
            "IT for the host and port of the HTTP proxy",
        )
    if isinstance(error, ProxyAuthRequired):
        return _auth(env, error, rule)
    if isinstance(error, ProxyForbidden):
        return failed(
            PROXY,
            f"the proxy {proxy} forbids CONNECT to {relay} ({_status(error)})",
            f"ask IT to allow {rule} for this gateway",
        )
    if isinstance(error, ProxyRefusedStatus) and error.status in UPSTREAM_FAILURES:
        return passed(
            PROXY, f"the proxy {proxy} takes CONNECT{as_user}, but could not reach the relay"
        )
    if isinstance(error, ProxyError):
        return failed(PROXY, str(error), f"ask IT to allow {rule} for this gateway")
    return failed(PROXY, f"cannot use the proxy {proxy}: {error}", f"ask IT to allow {rule}")


def _status(error: ProxyError) -> str:
    text = str(error)
    return text.rsplit(": ", 1)[-1].strip("'") if ": " in text else text


def _auth(env: CheckEnv, error: ProxyAuthRequired, rule: str) -> CheckResult:
    link, proxy = env.config.relay, env.proxy
    schemes = " or ".join(error.schemes) or "an unnamed scheme"
    if not error.basic_offered:
        return failed(
            PROXY,
            f"the proxy {proxy} wants {schemes} authentication (a Windows login), which this "
            "gateway cannot do",
            f"ask IT to allow {rule} for this gateway's address without authentication, or to "
            "accept Basic authentication from it",
        )
    if not error.sent:
        return failed(
            PROXY,
            f"the proxy {proxy} wants a user name and password ({schemes}); none is configured",
            "ask IT for a proxy account for this gateway, write user:password into a file "
            "readable only by the gateway (chmod 600) and name it in [relay] proxy_credentials",
        )
    creds = link.proxy_credentials
    user = creds.user if creds is not None else "?"
    where = f" in {creds.path}" if creds is not None else ""
    return failed(
        PROXY,
        f"the proxy {proxy} did not accept the user {user!r} (407 again)",
        f"the user name or password{where} is wrong, or the account is locked or expired: ask "
        f"IT to check the proxy account {user!r}",
    )
