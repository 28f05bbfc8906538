"""The relay probe's TLS in memory against a real pyOpenSSL server: the relay's clock from its
ServerHello, and the chain a TLS-inspecting box presents (to name its issuer)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.checks.env import CheckEnv
from gateway.checks.probe import ProbeReport, _Probe
from gateway.checks.tls import check_tls, presented_issuer
from gateway.config import Address
from gateway.pki import create_ca, issue_relay_certificate
from gateway.tls.options import SSL_MODE_SEND_SERVERHELLO_TIME
from tests.helpers.pki import make_pki
from tests.unit.test_checks import write_config


class ProbeTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-probe-"))
        self.pki = make_pki(self.tmp / "pki", relay_names=["relay.example.com"])
        self.config = write_config(self.tmp, self.pki)
        self.reactor = MemoryReactorClock()
        self.now = datetime.now(UTC).timestamp()
        self.reactor.advance(self.now)

    def server(self, cert: Path, key: Path) -> SSL.Connection:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.use_certificate_file(str(cert))
        ctx.use_privatekey_file(str(key))
        ctx.set_mode(SSL_MODE_SEND_SERVERHELLO_TIME)
        ctx.set_alpn_select_callback(lambda conn, offered: b"h2")
        connection = SSL.Connection(ctx, None)
        connection.set_accept_state()
        return connection

    def run_probe(self, server: SSL.Connection) -> ProbeReport:
        env = CheckEnv(self.config, self.reactor, lambda h, p: Deferred())
        report = ProbeReport(Address("relay.example.com", 443), None, False, started=self.now)
        done: Deferred[ProbeReport] = Deferred()
        probe = _Probe(env, report, done)
        transport = StringTransport()
        probe.makeConnection(transport)
        greeted = False
        for _ in range(20):
            sent = transport.value()
            transport.clear()
            if sent:
                server.bio_write(sent)
            try:
                server.do_handshake()
                if not greeted:
                    server.send(b"relay preface")
                    greeted = True
            except SSL.WantReadError:
                pass
            except SSL.Error:
                pass
            try:
                reply = server.bio_read(65536)
            except SSL.WantReadError:
                reply = b""
            if reply:
                probe.dataReceived(reply)
            if done.called:
                break
        result = self.successResultOf(done)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        return result

    def test_the_genuine_relay_passes_and_tells_its_clock(self) -> None:
        report = self.run_probe(self.server(self.pki.relay_cert, self.pki.relay_key))
        self.assertEqual(report.verify_errors, [])
        self.assertEqual(report.alpn, b"h2")
        self.assertTrue(report.accepted)
        assert report.relay_time is not None
        self.assertLess(abs(report.relay_time - self.now), 5)
        self.assertTrue(check_tls(CheckEnv(self.config, self.reactor, None), True, report, None).ok)  # type: ignore[arg-type]

    def test_a_tls_inspecting_box_is_caught_and_its_issuer_named(self) -> None:
        box = self.tmp / "box"
        box.mkdir()
        create_ca(box / "ca.pem", box / "ca.key", name="Fortinet CA")
        issue_relay_certificate(
            box / "ca.pem",
            box / "ca.key",
            box / "r.pem",
            box / "r.key",
            names=["relay.example.com"],
        )
        report = self.run_probe(self.server(box / "r.pem", box / "r.key"))
        self.assertTrue(report.untrusted)
        self.assertFalse(report.handshake_done)
        self.assertEqual(presented_issuer(report.presented_chain), "Fortinet CA")
        self.assertFalse(report.accepted)
