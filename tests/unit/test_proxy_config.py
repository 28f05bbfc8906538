"""``[relay] proxy_credentials`` and ``no_proxy``, ``[checks] interval``: loaded, or refused in
one line naming the key."""

from __future__ import annotations

import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.config import ConfigError, GatewayConfig, load_gateway_config
from tests.helpers.pki import make_pki


class ProxyConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-proxycfg-"))
        self.pki = make_pki(self.tmp / "pki")
        self.creds = self.tmp / "proxy-credentials"
        self.creds.write_text("plant-gw:pa:ss word\n")
        self.creds.chmod(0o600)

    def load(self, relay: str = "", rest: str = "") -> GatewayConfig:
        path = self.tmp / "gateway.toml"
        path.write_text(
            f'[relay]\naddress = "relay.example.com:443"\nca = "{self.pki.ca_cert}"\n'
            f'cert = "{self.pki.gateway_cert}"\nkey = "{self.pki.gateway_key}"\n{relay}\n{rest}'
        )
        return load_gateway_config(path)

    def error(self, relay: str = "", rest: str = "") -> ConfigError:
        with self.assertRaises(ConfigError) as caught:
            self.load(relay, rest)
        error: ConfigError = caught.exception
        return error

    def test_credentials_are_read_from_their_file(self) -> None:
        config = self.load(f'proxy = "http://proxy:3128"\nproxy_credentials = "{self.creds}"')
        creds = config.relay.proxy_credentials
        assert creds is not None
        self.assertEqual((creds.user, creds.password), ("plant-gw", "pa:ss word"))
        self.assertNotIn("pa:ss", repr(config))

    def test_credentials_readable_by_others_are_refused_with_the_fix(self) -> None:
        self.creds.chmod(0o644)
        error = self.error(f'proxy = "http://proxy:3128"\nproxy_credentials = "{self.creds}"')
        self.assertEqual(error.key, "relay.proxy_credentials")
        self.assertIn(f"chmod 600 {self.creds}", error.problem)

    def test_credentials_without_a_proxy_or_colon_are_refused(self) -> None:
        self.assertIn("no proxy", self.error(f'proxy_credentials = "{self.creds}"').problem)
        self.creds.write_text("just-a-user\n")
        error = self.error(f'proxy = "http://proxy:3128"\nproxy_credentials = "{self.creds}"')
        self.assertIn("user:password", error.problem)

    def test_a_password_in_the_proxy_url_points_at_the_credentials_file(self) -> None:
        error = self.error('proxy = "http://u:p@proxy:3128"')
        self.assertIn("proxy_credentials", error.problem)

    def test_no_proxy_takes_a_list_or_a_comma_string(self) -> None:
        config = self.load('proxy = "http://proxy:3128"\nno_proxy = [".Example.com", "10.0.0.0/8"]')
        self.assertEqual(config.relay.no_proxy, (".example.com", "10.0.0.0/8"))
        config = self.load('proxy = "http://proxy:3128"\nno_proxy = "a.example, *"')
        self.assertEqual(config.relay.no_proxy, ("a.example", "*"))
        self.assertEqual(self.error('no_proxy = ["bad host!"]').key, "relay.no_proxy")

    def test_checks_interval(self) -> None:
        self.assertEqual(self.load().checks_interval, 300.0)
        self.assertEqual(self.load(rest="[checks]\ninterval = 60\n").checks_interval, 60.0)
        self.assertEqual(self.error(rest="[checks]\ninterval = 1\n").key, "checks.interval")
        self.assertEqual(self.error(rest="[checks]\nintervall = 60\n").key, "checks.intervall")
