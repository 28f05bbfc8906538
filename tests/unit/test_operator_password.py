"""``gateway operator-password``, and ``[status] cert``/``key`` for the page over HTTPS."""

from __future__ import annotations

import io
import json
import stat
import sys
import tempfile
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from gateway.auditlog.files import CURRENT
from gateway.cli import main
from gateway.config import ConfigError, load_gateway_config
from gateway.web.operator import check_password, read_password
from gateway.web.pagetls import page_tls_options
from tests.helpers.pki import make_pki

GATEWAY_TOML = """
[relay]
address = "relay.example.com:443"
ca = "{pki}/ca.pem"
cert = "{pki}/gateway.pem"
key = "{pki}/gateway.key"

[[target]]
name = "web"
address = "127.0.0.1:80"

[status]
listen = "0.0.0.0:8081"
{status}
"""


class OperatorPasswordTests(SynchronousTestCase):
    pki: ClassVar[tempfile.TemporaryDirectory[str]]

    @classmethod
    def setUpClass(cls) -> None:
        cls.pki = tempfile.TemporaryDirectory(prefix="test-operator-pki-")
        make_pki(Path(cls.pki.name))

    @classmethod
    def tearDownClass(cls) -> None:
        cls.pki.cleanup()

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-operator-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name)
        self.config = self.root / "gateway.toml"
        self.write("")

    def write(self, status: str) -> None:
        self.config.write_text(GATEWAY_TOML.format(pki=self.pki.name, status=status))

    def run_cli(self, stdin: str, *argv: str) -> tuple[int, str]:
        self.patch(sys, "stdin", io.StringIO(stdin))
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), stdout=out, stderr=err)
        return code, err.getvalue()

    def test_stdin_sets_the_password_as_a_hash_and_audits_it(self) -> None:
        argv = ["operator-password", "-c", str(self.config), "--stdin"]
        code, err = self.run_cli("a long plant password\n", *argv)
        self.assertEqual(code, 0, err)
        state = self.root / "state"
        stored = read_password(state)
        assert stored is not None
        self.assertTrue(check_password(stored, "a long plant password"))
        self.assertEqual(stat.S_IMODE((state / "operator-password").stat().st_mode), 0o600)
        records = [
            json.loads(line) for line in (state / "audit" / CURRENT).read_text().splitlines()
        ]
        self.assertEqual(records[-1]["event"], "operator.password_set")
        self.assertNotIn("a long plant password", (state / "audit" / CURRENT).read_text())

    def test_a_short_password_is_refused_and_nothing_changes(self) -> None:
        code, err = self.run_cli("short\n", "operator-password", "-c", str(self.config), "--stdin")
        self.assertEqual(code, 1)
        self.assertIn("at least 10 characters", err)
        self.assertIsNone(read_password(self.root / "state"))

    def test_without_a_terminal_or_stdin_flag_it_says_how(self) -> None:
        code, err = self.run_cli("", "operator-password", "-c", str(self.config))
        self.assertEqual(code, 2)
        self.assertIn("--stdin", err)

    def test_status_cert_and_key_serve_the_page_over_tls(self) -> None:
        pki = self.pki.name
        self.write(f'cert = "{pki}/gateway.pem"\nkey = "{pki}/gateway.key"')
        config = load_gateway_config(self.config)
        assert config.status_tls is not None
        self.assertEqual(config.status_tls.cert, Path(pki) / "gateway.pem")
        self.assertIsNotNone(page_tls_options(config))

    def test_a_cert_without_a_key_is_one_clear_error(self) -> None:
        self.write(f'cert = "{self.pki.name}/gateway.pem"')
        with self.assertRaises(ConfigError) as raised:
            load_gateway_config(self.config)
        self.assertIn("status.key", str(raised.exception))
