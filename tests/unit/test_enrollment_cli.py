"""``gateway relay enroll-token``, ``gateway relay revoke``, ``gateway enroll``'s config edit and
``[enrollment]`` in relay.toml, run in-process."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import main
from gateway.cli.enroll import update_relay_paths
from gateway.config import ConfigError, load_gateway_config, load_relay_config
from gateway.demo.stack import Layout, Ports, relay_toml
from gateway.enrollment.revocations import Revocations
from gateway.enrollment.tokens import TokenRefused, TokenStore, token_hash
from tests.helpers.pki import make_pki


class Run:
    def __init__(self, *argv: str) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.code = main(list(argv), stdout=self.out, stderr=self.err)
        self.stdout, self.stderr = self.out.getvalue(), self.err.getvalue()


class Relay:
    def __init__(self, case: SynchronousTestCase, enrollment: str | None = "") -> None:
        self.work = Path(tempfile.mkdtemp())
        case.addCleanup(shutil.rmtree, self.work)
        self.pki = make_pki(self.work)
        layout = Layout(self.work)
        text = relay_toml(layout, Ports(1, 2, 3, 4, 5, None, 6))
        if enrollment is not None:
            text += f'\n[enrollment]\nca_key = "{self.pki.ca_key}"\n{enrollment}'
        self.config = self.work / "relay.toml"
        self.config.write_text(text)
        self.state = layout.relay_state

    def run(self, *argv: str) -> Run:
        return Run("relay", *argv, "-c", str(self.config))

    def audit_events(self) -> list[str]:
        folder = self.state / "audit"
        return [
            json.loads(line)["event"]
            for path in sorted(folder.glob("*"))
            for line in path.read_text().splitlines()
            if line.strip()
        ]


class EnrollTokenTests(SynchronousTestCase):
    def test_the_token_is_printed_once_and_only_its_hash_is_kept(self) -> None:
        relay = Relay(self)
        result = relay.run("enroll-token", "plant7")
        self.assertEqual(result.code, 0, result.stderr)
        token = result.stdout.strip()
        self.assertTrue(token.startswith("plant7."))
        self.assertIn("gateway enroll --relay localhost:2 --ca", result.stderr)
        stored = (relay.state / "enrollment" / "tokens.json").read_text()
        self.assertNotIn(token, stored)
        self.assertIn(token_hash(token), stored)
        self.assertEqual(TokenStore(relay.state, time.time).use(token), "plant7")
        self.assertIn("enrollment.token_issued", relay.audit_events())

    def test_json_and_hours(self) -> None:
        relay = Relay(self)
        result = relay.run("enroll-token", "plant7", "--hours", "2", "--json")
        self.assertEqual(result.code, 0, result.stderr)
        data = json.loads(result.stdout)
        self.assertEqual(data["gateway"], "plant7")
        self.assertTrue(data["token"].startswith("plant7."))

    def test_a_bad_id_or_duration_is_a_usage_error(self) -> None:
        relay = Relay(self)
        self.assertEqual(relay.run("enroll-token", "Plant_7").code, 2)
        self.assertEqual(relay.run("enroll-token", "plant7", "--hours", "0").code, 2)
        self.assertEqual(relay.run("enroll-token", "plant7", "--hours", "9999").code, 2)

    def test_a_relay_without_enrollment_refuses(self) -> None:
        relay = Relay(self, enrollment=None)
        result = relay.run("enroll-token", "plant7")
        self.assertEqual(result.code, 1)
        self.assertIn("no [enrollment] table", result.stderr)


class RevokeTests(SynchronousTestCase):
    def test_revoking_records_it_withdraws_tokens_and_refuses_new_ones(self) -> None:
        relay = Relay(self)
        token = relay.run("enroll-token", "plant7").stdout.strip()
        result = relay.run("revoke", "plant7")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("1 unused enrollment token(s) withdrawn", result.stderr)
        self.assertIsNotNone(Revocations(relay.state).why_revoked("plant7", None))
        with self.assertRaises(TokenRefused):
            TokenStore(relay.state, time.time).use(token)
        again = relay.run("enroll-token", "plant7")
        self.assertEqual(again.code, 1)
        self.assertIn("revoked", again.stderr)
        self.assertIn("gateway.revoked", relay.audit_events())
        self.assertIn("was revoked already", relay.run("revoke", "plant7").stderr)

    def test_revoking_one_serial_leaves_the_gateway(self) -> None:
        relay = Relay(self)
        self.assertEqual(relay.run("revoke", "plant7", "--serial", "0A1b").code, 0)
        revoked = Revocations(relay.state)
        self.assertIsNone(revoked.why_revoked("plant7", 0xA1C))
        self.assertIsNotNone(revoked.why_revoked("plant7", 0xA1B))
        self.assertEqual(relay.run("revoke", "plant7", "--serial", "xyz").code, 2)


class EnrollmentConfigTests(SynchronousTestCase):
    def test_the_ca_certificate_defaults_to_the_gateway_ca(self) -> None:
        relay = Relay(self)
        config = load_relay_config(relay.config)
        assert config.enrollment is not None
        self.assertEqual(config.enrollment.ca_cert, config.gateways.ca)
        self.assertEqual(config.enrollment.ca_key, relay.pki.ca_key)
        self.assertEqual(config.enrollment.certificate_days, 90.0)

    def test_mistakes_name_the_key(self) -> None:
        for extra, key in (
            ("certificate_days = 0\n", "enrollment.certificate_days"),
            ("certificate_days = 9000\n", "enrollment.certificate_days"),
            ('certificate_days = "90"\n', "enrollment.certificate_days"),
            ("colour = 1\n", "enrollment.colour"),
        ):
            relay = Relay(self, enrollment=extra)
            with self.assertRaises(ConfigError) as raised:
                load_relay_config(relay.config)
            self.assertEqual(raised.exception.key, key)

    def test_without_the_table_there_is_no_enrollment(self) -> None:
        self.assertIsNone(load_relay_config(Relay(self, enrollment=None).config).enrollment)


class ConfigEditTests(SynchronousTestCase):
    def test_cert_and_key_are_set_in_relay_and_the_rest_is_kept(self) -> None:
        work = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, work)
        pki = make_pki(work / "pki")
        shutil.copy(pki.gateway_cert, work / "new.pem")
        shutil.copy(pki.gateway_key, work / "new.key")
        (work / "new.key").chmod(0o600)
        path = work / "gateway.toml"
        path.write_text(
            "# my notes\n[relay]\n"
            f'address = "relay:443"  # the relay\nca = "{pki.ca_cert}"\n'
            'cert = "old.pem"  # from the vendor\n# key = "commented.key"\n\n'
            '[[target]]\nname = "web"\naddress = "10.0.0.2:80"\n'
        )
        path.chmod(0o640)
        update_relay_paths(path, work / "new.pem", work / "new.key")
        text = path.read_text()
        self.assertIn("# my notes", text)
        self.assertIn('cert = "new.pem"  # from the vendor', text)
        self.assertIn('key = "new.key"', text)
        self.assertLess(text.index('key = "new.key"'), text.index("[[target]]"))
        self.assertIn('# key = "commented.key"', text)
        self.assertEqual(path.stat().st_mode & 0o777, 0o640)
        config = load_gateway_config(path)
        self.assertEqual(config.relay.cert, work / "new.pem")
        self.assertEqual(config.targets[0].name, "web")
        # Enrolled again to the same files: the config (a package's conffile) is not rewritten,
        # and when rewritten as root it keeps its owner and group (the daemon's group reads it).
        before = path.stat()
        update_relay_paths(path, work / "new.pem", work / "new.key")
        self.assertEqual(path.stat().st_ino, before.st_ino)
        if os.geteuid() == 0:
            os.chown(path, 0, 4242)
            update_relay_paths(path, work / "other.pem", work / "new.key")
            after = path.stat()
            self.assertNotEqual(after.st_ino, before.st_ino)
            self.assertEqual((after.st_uid, after.st_gid), (0, 4242))


class EnrollCommandTests(SynchronousTestCase):
    def test_text_that_is_no_token_is_a_usage_error(self) -> None:
        result = Run(
            "enroll",
            "--relay",
            "relay:443",
            "--ca",
            "ca.pem",
            "--token",
            "nonsense",
            "-c",
            "gateway.toml",
        )
        self.assertEqual(result.code, 2)
        self.assertIn("--token", result.stderr)


class KeyOwnerTests(SynchronousTestCase):
    def test_as_root_the_key_goes_to_the_service_user_and_stays_private(self) -> None:
        import os
        import stat

        from gateway.cli.enroll import install_identity

        if os.geteuid() != 0:
            raise __import__("unittest").SkipTest("needs root to hand files over")
        work = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, work)
        cert, key = work / "gateway.pem", work / "gateway.key"
        install_identity(cert, key, b"CERT", b"KEY", owner=(65534, 65534))
        for path in (cert, key):
            self.assertEqual((path.stat().st_uid, path.stat().st_gid), (65534, 65534))
        self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(cert.stat().st_mode), 0o644)

    def test_owner_is_the_named_user_or_the_configs(self) -> None:
        from gateway.cli.common import UsageError
        from gateway.cli.enroll import _owner

        work = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, work)
        self.assertEqual(_owner("root", work / "gateway.toml"), (0, 0))
        with self.assertRaises(UsageError):
            _owner("no-such-user-here", work / "gateway.toml")


class BrokenStateTests(SynchronousTestCase):
    def test_a_broken_token_file_is_one_line_not_a_traceback(self) -> None:
        relay = Relay(self)
        folder = relay.state / "enrollment"
        folder.mkdir(parents=True)
        (folder / "tokens.json").write_text("{ broken")
        result = relay.run("enroll-token", "plant7")
        self.assertEqual(result.code, 1)
        self.assertIn("tokens.json: cannot read it", result.stderr)
        self.assertNotIn("Traceback", result.stderr)


class RevocationsListTests(SynchronousTestCase):
    def test_the_list_shows_ids_and_serials(self) -> None:
        relay = Relay(self)
        self.assertIn("nothing is revoked", relay.run("revocations").stdout)
        relay.run("revoke", "plant7")
        relay.run("revoke", "plant8", "--serial", "abc")
        text = relay.run("revocations").stdout
        self.assertIn("plant7  every certificate  revoked ", text)
        self.assertIn("plant8  certificate abc  revoked ", text)
        data = json.loads(relay.run("revocations", "--json").stdout)
        self.assertEqual(
            [(r["gateway"], r["serial"]) for r in data["revoked"]],
            [("plant7", None), ("plant8", "abc")],
        )
