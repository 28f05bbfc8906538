"""Each connectivity check's pass and fail paths and remedies, with fakes for DNS, the interface
table, time and sockets (no network, no threads: a `MemoryReactorClock`)."""

from __future__ import annotations

import socket
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.checks.certificate import check_certificate
from gateway.checks.clock import check_clock, skew_of
from gateway.checks.dns import DnsAnswer, check_dns, resolve_first_hop
from gateway.checks.env import CheckEnv, TLSFacts, TunnelState
from gateway.checks.network import check_network
from gateway.checks.probe import ProbeReport
from gateway.checks.proxy import check_proxy
from gateway.checks.result import CheckResult, not_checked
from gateway.checks.targets import check_target
from gateway.checks.tcp import check_tcp
from gateway.checks.tls import check_tls
from gateway.checks.tunnel import check_tunnel
from gateway.cli.check import DaemonSeen, human_view, report_json
from gateway.config import Address, GatewayConfig, ProxyCredentials, load_gateway_config
from gateway.net.proxy import (
    ProxyAuthRequired,
    ProxyForbidden,
    ProxyNotHTTP,
    ProxyRefusedStatus,
    ProxyUnreachable,
)
from gateway.pki import create_ca, issue_gateway_certificate, issue_relay_certificate
from tests.helpers.pki import TestPKI, make_pki

RELAY = Address("relay.example.com", 443)


def write_config(
    directory: Path, pki: TestPKI, relay: str = "relay.example.com:443", extra: str = ""
) -> GatewayConfig:
    path = directory / "gateway.toml"
    path.write_text(
        f'[relay]\naddress = "{relay}"\nca = "{pki.ca_cert}"\ncert = "{pki.gateway_cert}"\n'
        f'key = "{pki.gateway_key}"\n{extra}\n[[target]]\nname = "web"\n'
        'address = "192.168.10.2:80"\n'
    )
    return load_gateway_config(path)


class FakeNetifaces:
    AF_INET, AF_INET6 = 2, 10

    def __init__(self, addresses: dict[str, list[tuple[str, str]]], default: str | None) -> None:
        self._addresses, self._default = addresses, default

    def interfaces(self) -> list[str]:
        return list(self._addresses)

    def ifaddresses(self, name: str) -> dict[int, list[dict[str, str]]]:
        return {self.AF_INET: [{"addr": a, "netmask": m} for a, m in self._addresses[name]]}

    def gateways(self) -> dict[Any, Any]:
        return {"default": {self.AF_INET: (self._default, "eth0")}} if self._default else {}


class Fixture(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-checks-"))
        self.addCleanup(lambda: __import__("shutil").rmtree(self.tmp, ignore_errors=True))
        self.pki = make_pki(
            self.tmp / "pki", gateway_id="plant7-gw", relay_names=["relay.example.com"]
        )
        self.reactor = MemoryReactorClock()
        self.reactor.advance(datetime.now(UTC).timestamp())
        self.config = write_config(self.tmp, self.pki)
        self.resolved: dict[str, Deferred[list[str]]] = {}

    def env(self, config: GatewayConfig | None = None, **kw: Any) -> CheckEnv:
        def resolve(host: str, port: int) -> Deferred[list[str]]:
            return self.resolved.get(host, succeed(["203.0.113.5"]))

        netifaces = kw.pop(
            "netifaces", FakeNetifaces({"lo": [("127.0.0.1", "255.0.0.0")],
                                        "eth0": [("192.0.2.10", "255.255.255.0")]}, "192.0.2.1")
        )  # fmt: skip
        return CheckEnv(
            config or self.config, self.reactor, resolve, netifaces=lambda: netifaces, **kw
        )

    def report(self, **kw: Any) -> ProbeReport:
        return ProbeReport(RELAY, kw.pop("proxy", None), kw.pop("fresh_tunnel", True), **kw)

    def relay_chain(self, ca_name: str | None = None) -> list[x509.Certificate]:
        if ca_name is None:
            return [x509.load_pem_x509_certificate(self.pki.relay_cert.read_bytes())]
        other = self.tmp / ca_name.replace(" ", "-")
        other.mkdir()
        create_ca(other / "ca.pem", other / "ca.key", name=ca_name)
        issue_relay_certificate(other / "ca.pem", other / "ca.key", other / "r.pem", other / "r.key",  # noqa: E501
                                names=["relay.example.com"])  # fmt: skip
        return [x509.load_pem_x509_certificate((other / "r.pem").read_bytes())]


class NetworkTests(Fixture):
    def test_addresses_and_a_default_route_pass(self) -> None:
        result = check_network(self.env(), ["203.0.113.5"])
        self.assertTrue(result.ok)
        self.assertIn("eth0 192.0.2.10/24", result.detail)
        self.assertIn("default route via 192.0.2.1 (eth0)", result.detail)

    def test_no_address_but_loopback_fails_with_the_cable_remedy(self) -> None:
        env = self.env(netifaces=FakeNetifaces({"lo": [("127.0.0.1", "255.0.0.0")]}, None))
        result = check_network(env, ["203.0.113.5"])
        self.assertFalse(result.ok)
        self.assertIn("network cable", result.remedy)

    def test_no_default_route_fails_unless_the_relay_is_on_link(self) -> None:
        env = self.env(netifaces=FakeNetifaces({"eth0": [("192.0.2.10", "255.255.255.0")]}, None))
        result = check_network(env, ["203.0.113.5"])
        self.assertFalse(result.ok)
        self.assertIn("router (default gateway)", result.remedy)
        self.assertIn("relay.example.com", result.remedy)
        self.assertTrue(check_network(env, ["192.0.2.99"]).ok)


class DnsTests(Fixture):
    def test_a_name_that_resolves_passes(self) -> None:
        answer = self.successResultOf(resolve_first_hop(self.env()))
        self.assertTrue(check_dns(self.env(), answer).ok)

    def test_a_name_that_does_not_resolve_names_the_dns_servers(self) -> None:
        resolv = self.tmp / "resolv.conf"
        resolv.write_text("nameserver 10.0.0.53\nsearch plant\n")
        self.resolved["relay.example.com"] = fail(socket.gaierror(-2, "Name or service not known"))
        env = self.env(resolv_conf=resolv)
        result = check_dns(env, self.successResultOf(resolve_first_hop(env)))
        self.assertFalse(result.ok)
        self.assertIn(
            "relay.example.com does not resolve (Name or service not known)", result.detail
        )
        self.assertIn("UDP and TCP 53) to 10.0.0.53", result.remedy)
        self.assertIn('server_name = "relay.example.com"', result.remedy)

    def test_a_resolver_that_hangs_times_out_on_the_clock(self) -> None:
        self.resolved["relay.example.com"] = Deferred()
        d = resolve_first_hop(self.env())
        self.reactor.advance(5)
        self.assertEqual(self.successResultOf(d).error, "no answer within 5 s")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_with_a_proxy_the_proxys_name_is_resolved(self) -> None:
        config = write_config(self.tmp, self.pki, extra='proxy = "http://proxy.plant:3128"')
        env = self.env(config)
        self.assertEqual(self.successResultOf(resolve_first_hop(env)).host, "proxy.plant")


class ProxyTests(Fixture):
    def setUp(self) -> None:
        super().setUp()
        self.proxied = write_config(self.tmp, self.pki, extra='proxy = "http://proxy.plant:3128"')
        self.dns = DnsAnswer("proxy.plant", ("10.0.0.3",))

    def proxy_error(self, error: Exception, config: GatewayConfig | None = None) -> CheckResult:
        report = self.report(proxy=Address("proxy.plant", 3128), connect_error=Failure(error))
        return check_proxy(self.env(config or self.proxied), self.dns, report, None)

    def test_no_proxy_passes(self) -> None:
        self.assertTrue(
            check_proxy(
                self.env(), DnsAnswer("relay.example.com", ("1.2.3.4",)), self.report(), None
            ).ok
        )

    def test_connect_allowed_passes(self) -> None:
        report = self.report(proxy=Address("proxy.plant", 3128), connected=True)
        self.assertTrue(check_proxy(self.env(self.proxied), self.dns, report, None).ok)

    def test_unreachable_names_the_proxy_port(self) -> None:
        result = self.proxy_error(
            ProxyUnreachable("cannot reach the proxy proxy.plant:3128: refused")
        )
        self.assertIn("outbound TCP 3128 to proxy.plant", result.remedy)

    def test_forbidden_names_the_connect_rule(self) -> None:
        result = self.proxy_error(
            ProxyForbidden("the proxy refused CONNECT x: 'HTTP/1.1 403 Forbidden'")
        )
        self.assertFalse(result.ok)
        self.assertIn(
            "forbids CONNECT to relay.example.com:443 (HTTP/1.1 403 Forbidden)", result.detail
        )
        self.assertIn(
            "HTTPS (CONNECT) to relay.example.com port 443 through the proxy proxy.plant:3128",
            result.remedy,
        )

    def test_ntlm_is_said_plainly(self) -> None:
        result = self.proxy_error(
            ProxyAuthRequired("407", schemes=("NTLM", "Negotiate"), sent=False)
        )
        self.assertIn(
            "wants NTLM or Negotiate authentication (a Windows login), which this gateway cannot do",  # noqa: E501
            result.detail,
        )
        self.assertIn("without authentication", result.remedy)

    def test_missing_basic_credentials_point_at_the_setting(self) -> None:
        result = self.proxy_error(ProxyAuthRequired("407", schemes=("Basic",), sent=False))
        self.assertIn("[relay] proxy_credentials", result.remedy)

    def test_refused_credentials_name_the_account_not_the_password(self) -> None:
        config = attrs.evolve(
            self.proxied,
            relay=attrs.evolve(
                self.proxied.relay,
                proxy_credentials=ProxyCredentials(Path("/etc/gw/proxy"), "gw7", "pw-secret"),
            ),
        )
        result = self.proxy_error(ProxyAuthRequired("407", schemes=("Basic",), sent=True), config)
        self.assertIn("did not accept the user 'gw7'", result.detail)
        self.assertIn("/etc/gw/proxy", result.remedy)
        self.assertNotIn("pw-secret", result.detail + result.remedy)

    def test_not_http_asks_for_the_right_port(self) -> None:
        self.assertIn("not an HTTP proxy", self.proxy_error(ProxyNotHTTP("x")).remedy)

    def test_502_passes_the_proxy_and_fails_tcp(self) -> None:
        error = ProxyRefusedStatus("x", status=502)
        self.assertTrue(self.proxy_error(error).ok)
        report = self.report(proxy=Address("proxy.plant", 3128), connect_error=Failure(error))
        tcp = check_tcp(self.env(self.proxied), self.dns, report, None)
        self.assertFalse(tcp.ok)
        self.assertIn(
            "let the proxy make outbound TCP 443 to relay.example.com (HTTPS)", tcp.remedy
        )


class TcpTests(Fixture):
    dns = DnsAnswer("relay.example.com", ("203.0.113.5",))

    def test_refused_names_the_firewall_rule_and_the_address(self) -> None:
        result = check_tcp(
            self.env(), self.dns, self.report(connect_error=Failure(ConnectionRefusedError())), None
        )
        self.assertFalse(result.ok)
        self.assertIn("relay.example.com:443 refused the connection", result.detail)
        self.assertIn(
            "ask IT to allow outbound TCP 443 to relay.example.com (HTTPS)", result.remedy
        )

    def test_timeout_says_a_firewall_drops_it(self) -> None:
        result = check_tcp(
            self.env(), self.dns, self.report(connect_error=Failure(TimeoutError())), None
        )
        self.assertIn("a firewall drops the connection", result.detail)

    def test_without_dns_it_is_not_checked(self) -> None:
        result = check_tcp(self.env(), DnsAnswer("relay.example.com", error="nope"), None, None)
        self.assertEqual(result, not_checked("tcp", "relay.example.com does not resolve"))

    def test_a_live_tunnel_passes(self) -> None:
        live = TunnelState(
            "up", "now", 3.0, None, "this daemon", TLSFacts("TLSv1.3", b"h2", (), None, None)
        )
        self.assertTrue(check_tcp(self.env(), self.dns, None, live).ok)


class TlsTests(Fixture):
    def done(self, **kw: Any) -> ProbeReport:
        base: dict[str, Any] = dict(connected=True, first_reply=True, handshake_done=True, version="TLSv1.3",  # noqa: E501
                                    alpn=b"h2", accepted=True, presented_certificate=True)  # fmt: skip  # noqa: E501
        base.update(kw)
        return self.report(**base)

    def test_a_good_handshake_passes(self) -> None:
        chain = dict(enumerate(self.relay_chain()))
        self.assertTrue(check_tls(self.env(), True, self.done(chain=chain), None).ok)

    def test_another_ca_is_named_as_tls_inspection(self) -> None:
        chain = dict(enumerate(self.relay_chain("Fortinet CA")))
        result = check_tls(
            self.env(),
            True,
            self.done(chain=chain, verify_errors=[(0, 20)], handshake_done=False),
            None,
        )
        self.assertFalse(result.ok)
        self.assertIn(
            "a device on your network, issued by 'Fortinet CA', is inspecting TLS", result.detail
        )
        self.assertTrue(
            result.remedy.startswith(
                "a device on your network, issued by 'Fortinet CA', is inspecting TLS: ask IT to exempt relay.example.com:443 from TLS inspection"  # noqa: E501
            )
        )
        self.assertIn("'Test vendor CA'", result.detail)  # the pinned one

    def test_silence_after_tcp_is_a_blackhole(self) -> None:
        result = check_tls(self.env(), True, self.report(connected=True, tls_timeout=True), None)
        self.assertIn("nothing answered the TLS handshake within 5 s", result.detail)

    def test_an_expired_looking_relay_certificate_blames_a_clock_that_is_off(self) -> None:
        chain = self.relay_chain()
        now = datetime.now(UTC).timestamp()
        report = self.done(chain=dict(enumerate(chain)), verify_errors=[(0, 10)], relay_time=int(now),  # noqa: E501
                           local_time=now + 800 * 86400, handshake_done=False)  # fmt: skip
        result = check_tls(self.env(), True, report, None)
        self.assertIn(
            "looks expired only because this gateway's clock is 800 days 0 h ahead", result.detail
        )
        self.assertIn("clock", result.remedy)

    def test_the_relay_refusing_our_certificate_points_at_the_certificate_check(self) -> None:
        chain = dict(enumerate(self.relay_chain()))
        result = check_tls(
            self.env(),
            True,
            self.done(chain=chain, accepted=False, relay_refused="sslv3 alert certificate expired"),
            None,
        )
        self.assertIn(
            "the relay refused this gateway's certificate (sslv3 alert certificate expired)",
            result.detail,
        )
        self.assertIn("see the certificate check", result.remedy)

    def test_a_name_mismatch_suggests_server_name(self) -> None:
        chain = dict(enumerate(self.relay_chain()))
        result = check_tls(
            self.env(), True, self.done(chain=chain, name_error="for 'x', not 'y'"), None
        )
        self.assertIn("[relay] server_name", result.remedy)


class ClockTests(Fixture):
    def facts(self, skew: float, relay_time: float | None = None) -> TLSFacts:
        told = int(relay_time if relay_time is not None else datetime.now(UTC).timestamp())
        return TLSFacts("TLSv1.3", b"h2", tuple(self.relay_chain()), told, told + skew)

    def test_a_clock_within_two_minutes_passes(self) -> None:
        self.assertTrue(check_clock(self.env(), self.facts(30), None).ok)
        self.assertEqual(skew_of(self.facts(1)), 0.0)

    def test_a_clock_days_ahead_fails_with_the_time_to_set(self) -> None:
        result = check_clock(self.env(), self.facts(3 * 86400 + 7200), None)
        self.assertFalse(result.ok)
        self.assertIn("3 days 2 h ahead of the relay's", result.detail)
        self.assertIn("timedatectl set-ntp true", result.remedy)
        self.assertIn("UDP 123", result.remedy)

    def test_a_clock_behind_says_behind(self) -> None:
        self.assertIn("behind the relay's", check_clock(self.env(), self.facts(-600), None).detail)

    def test_random_bytes_from_an_older_relay_are_not_taken_for_a_time(self) -> None:
        result = check_clock(self.env(), self.facts(0, relay_time=123456), None)
        self.assertTrue(result.ok)
        self.assertIn("not measured", result.detail)

    def test_no_tls_answer_is_not_checked(self) -> None:
        self.assertFalse(check_clock(self.env(), None, "no TLS answer").ok)


class CertificateTests(Fixture):
    def with_certificate(self, **kw: Any) -> GatewayConfig:
        cert, key = self.tmp / "c.pem", self.tmp / "c.key"
        issue_gateway_certificate(
            self.pki.ca_cert, self.pki.ca_key, cert, key, gateway_id="plant7-gw", force=True, **kw
        )
        return attrs.evolve(self.config, relay=attrs.evolve(self.config.relay, cert=cert, key=key))

    def test_a_valid_certificate_says_how_long_it_lasts(self) -> None:
        result = check_certificate(self.env())
        self.assertTrue(result.ok)
        self.assertIn("'plant7-gw', from 'Test vendor CA') is valid until", result.detail)

    def test_an_expired_certificate_fails_with_renewal(self) -> None:
        config = self.with_certificate(days=1, now=datetime.now(UTC) - timedelta(days=30))
        result = check_certificate(self.env(config))
        self.assertIn("expired on", result.detail)
        self.assertIn("ask the vendor for a new certificate for gateway 'plant7-gw'", result.remedy)

    def test_a_not_yet_valid_certificate_suspects_the_clock(self) -> None:
        config = self.with_certificate(now=datetime.now(UTC) + timedelta(days=10))
        result = check_certificate(self.env(config))
        self.assertIn("is valid only from", result.detail)
        self.assertTrue(result.remedy.startswith("set this gateway's clock if it is wrong"))

    def test_expiring_within_two_weeks_fails(self) -> None:
        config = self.with_certificate(days=90, now=datetime.now(UTC) - timedelta(days=85))
        result = check_certificate(self.env(config))
        self.assertFalse(result.ok)
        self.assertIn("now", result.remedy)
        self.assertIn("renews it itself", result.remedy)

    def test_a_short_certificate_fails_only_in_its_last_quarter(self) -> None:
        # The relay's enrollment may issue short certificates; the gateway renews them at
        # two thirds of their life, so only a renewal that kept failing is a problem.
        fresh = check_certificate(self.env(self.with_certificate(days=8)))
        self.assertTrue(fresh.ok, fresh.detail)
        late = self.with_certificate(days=8, now=datetime.now(UTC) - timedelta(days=7))
        self.assertFalse(check_certificate(self.env(late)).ok)


class TunnelTests(Fixture):
    def test_a_fresh_handshake_with_an_answered_ping_passes(self) -> None:
        result = check_tunnel(
            self.env(), True, self.report(h2_ready=True, ping_rtt=0.012), None, "plant7-gw"
        )
        self.assertTrue(result.ok)
        self.assertIn(
            "heartbeat answered in 12.0 ms; the relay accepts this gateway as 'plant7-gw'",
            result.detail,
        )

    def test_a_goaway_is_the_relay_refusing_this_gateway(self) -> None:
        result = check_tunnel(
            self.env(),
            True,
            self.report(h2_ready=True, goaway="certificate: plant_7 is not a gateway id"),
            None,
            "plant_7",
        )
        self.assertFalse(result.ok)
        self.assertIn("ask the vendor", result.remedy)

    def test_the_daemons_tunnel_down_shows_its_last_error(self) -> None:
        live = TunnelState(
            "down", "2026-01-01T00:00:00+00:00", None, "connection refused", "this daemon"
        )
        result = check_tunnel(self.env(), False, None, live, "plant7-gw")
        self.assertIn(
            "down since 2026-01-01T00:00:00+00:00 (this daemon): connection refused", result.detail
        )
        self.assertIn("fix what the failed checks above report", result.remedy)


class TargetTests(Fixture):
    def test_a_refused_target_asks_if_the_processor_is_on(self) -> None:
        d = check_target(self.env(), self.config.targets[0])
        _host, _port, factory, _t, _b = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.reactor.advance(1)
        result = self.successResultOf(d)
        self.assertEqual(result.name, "target:web")
        self.assertIn("web at 192.168.10.2:80 refused the connection", result.detail)
        self.assertIn("is the processor on", result.remedy)


class ReportTests(SynchronousTestCase):
    results = [
        CheckResult("dns", True, "fine"),
        CheckResult("tcp", False, "refused", "ask IT to allow outbound TCP 443 to r (HTTPS)"),
        CheckResult("tls", False, "not checked: no TCP"),
    ]

    def test_json_shape(self) -> None:
        self.assertEqual(
            report_json(self.results),
            {"ok": False, "checks": [
                {"name": "dns", "ok": True, "detail": "fine", "remedy": ""},
                {"name": "tcp", "ok": False, "detail": "refused", "remedy": "ask IT to allow outbound TCP 443 to r (HTTPS)"},  # noqa: E501
                {"name": "tls", "ok": False, "detail": "not checked: no TCP", "remedy": ""},
            ]},
        )  # fmt: skip

    def test_the_human_view_puts_remedies_first_with_marks(self) -> None:
        lines = human_view(self.results, DaemonSeen(False), marks=("ok", "FAIL"))
        self.assertEqual(lines[0], "FAIL 2 of 3 checks failed")
        self.assertEqual(
            lines[2:4], ["What to do:", "  FAIL tcp: ask IT to allow outbound TCP 443 to r (HTTPS)"]
        )
        self.assertIn("  ok   dns  fine", lines)
